# The config checks that are more than one value's type: values that are
# fine alone but fail together (at run time, with a cryptic message, if they
# got past), the network keys, the poll windows, and the files a config
# names. gateway.config loads this module while it validates and drops it
# after. Each check returns None or the (key, sentence) of what is wrong,
# and gateway.config raises its ConfigError with them.
import json

from gateway import ipv4


def network_leaf(kind, key, value):
    if not isinstance(value, str):
        return key, "must be a string"
    if kind == "addr" and value and not ipv4.is_address(value):
        return key, "must be an IPv4 address like 192.168.1.20, or \"\" for DHCP"
    if kind == "label" and value and not _is_label(value):
        return key, "must be one name of letters, digits and '-' (at most 63), like odmrgw"
    return None


def _is_label(text):
    if len(text) > 63 or text[0] == "-" or text[-1] == "-":
        return False
    for c in text.encode():  # bytes: iterating a str makes one-character strings
        if not (c == 45 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122):
            return False
    return True


_WINDOW = '{"from": "07:00", "to": "19:00", "interval": 300}'


def _is_hhmm(text):
    h, _, m = text.partition(":") if isinstance(text, str) else ("", "", "")
    return h.isdigit() and m.isdigit() and int(h) < 24 and int(m) < 60


def windows(key, value):
    """Names the window and the field that is wrong."""
    if not isinstance(value, list):
        return key, "must be a list like [%s]" % _WINDOW
    for i, w in enumerate(value):
        at = "%s[%d]" % (key, i)
        if not isinstance(w, dict) or sorted(w) != ["from", "interval", "to"]:
            return at, "must have from, to and interval, like " + _WINDOW
        for field in ("from", "to"):
            if not _is_hhmm(w[field]):
                return at + "." + field, "%s is not a time from 00:00 to 23:59" % json.dumps(w[field])
        if not isinstance(w["interval"], int) or isinstance(w["interval"], bool) or w["interval"] <= 0:
            return at + ".interval", "must be a positive number of seconds"
    return None


def across(cfg):
    """Values that are fine alone but fail together, at run time and with
    a cryptic message, if they get past here."""
    taken = {}
    for name in ("smtp", "pop3", "imap"):
        port = cfg[name]["port"]
        if port in taken:
            return name + ".port", "is %s.port too (%d); each listener needs its own" % (taken[port], port)
        if port:  # imap's 0 is off
            taken[port] = name
    owner = {}
    for user in sorted(cfg["users"]):
        for address in cfg["users"][user]["addresses"]:
            if address in owner:
                return "users.%s.addresses" % user, "%s is %s's address already" % (address, owner[address])
            owner[address] = user
    known = set(cfg["domains"])
    for address in owner:
        known.add(address.rpartition("@")[2])
    for key, target in cfg["forward"].items():
        where = "forward." + key
        if key not in cfg["users"] and key.lower() not in known:
            return where, "%r is neither a user nor a domain of domains or of a user's address" % key
        host, colon, port = target.partition(":")
        if not host or " " in target or colon and not (port.isdigit() and 0 < int(port) < 65536):
            return where, "%s is not host or host:port (port 1-65535)" % json.dumps(target)
    return network(cfg["network"])


def network(net):
    """Static addressing takes ip, netmask and gateway together, the gateway
    on the box's own subnet; DHCP takes none of them."""
    if not net["ip"]:
        for k in ("netmask", "gateway", "dns"):
            if net[k]:
                return "network." + k, "is only used with a static network.ip (none: DHCP)"
        return None
    for k in ("netmask", "gateway"):
        if not net[k]:
            return "network." + k, "must be set with a static network.ip"
    mask = ipv4.value(net["netmask"])
    if mask == 0 or (mask | (mask - 1)) != 0xFFFFFFFF:
        return "network.netmask", "%s is not a netmask like 255.255.255.0" % net["netmask"]
    if ipv4.value(net["ip"]) & mask != ipv4.value(net["gateway"]) & mask:
        return "network.gateway", "%s is not on the subnet of network.ip %s/%s" % (net["gateway"], net["ip"], net["netmask"])
    return None


# Files a config names on the flash (gateway.config.missing_file).
FILE_KEYS = ("smtp.cert", "smtp.key", "pop3.cert", "pop3.key", "relay.ca", "smarthost.ca")


def missing_file(cfg, exists=None):
    if exists is None:
        from gateway.record import exists
    for key in FILE_KEYS:
        section, _, name = key.partition(".")
        path = cfg[section][name]
        if path and not exists(path):
            return key, "no file %s on the box's flash" % path
    return None
