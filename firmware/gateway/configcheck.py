# The config checks that are more than one value's type: values that are
# fine alone but fail together (at run time, with a cryptic message, if they
# got past), the network keys, and which field of a poll window is wrong.
# gateway.config loads this module while it validates and drops it after.
import json

from gateway.config import ConfigError, _check_net, _is_hhmm


def network_leaf(kind, key, value):
    if not isinstance(value, str):
        raise ConfigError(key, "must be a string")
    if kind == "addr" and value and ("/" in value or not _check_net(value)):
        raise ConfigError(key, "must be an IPv4 address like 192.168.1.20, or \"\" for DHCP")
    if kind == "label" and value and not _is_label(value):
        raise ConfigError(key, "must be one name of letters, digits and '-' (at most 63), like odmrgw")


def _is_label(text):
    if len(text) > 63 or text[0] == "-" or text[-1] == "-":
        return False
    for c in text.encode():  # bytes: iterating a str makes one-character strings
        if not (c == 45 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122):
            return False
    return True


_WINDOW = '{"from": "07:00", "to": "19:00", "interval": 300}'


def windows(key, value):
    """Names the window and the field that is wrong."""
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list like [%s]" % _WINDOW)
    for i, w in enumerate(value):
        at = "%s[%d]" % (key, i)
        if not isinstance(w, dict) or sorted(w) != ["from", "interval", "to"]:
            raise ConfigError(at, "must have from, to and interval, like " + _WINDOW)
        for field in ("from", "to"):
            if not _is_hhmm(w[field]):
                raise ConfigError(at + "." + field, "%s is not a time from 00:00 to 23:59" % json.dumps(w[field]))
        if not isinstance(w["interval"], int) or isinstance(w["interval"], bool) or w["interval"] <= 0:
            raise ConfigError(at + ".interval", "must be a positive number of seconds")


def across(cfg):
    """Values that are fine alone but fail together, at run time and with
    a cryptic message, if they get past here."""
    taken = {}
    for name in ("smtp", "pop3", "imap"):
        port = cfg[name]["port"]
        if port in taken:
            raise ConfigError(name + ".port", "is %s.port too (%d); each listener needs its own" % (taken[port], port))
        if port:  # imap's 0 is off
            taken[port] = name
    owner = {}
    for user in sorted(cfg["users"]):
        for address in cfg["users"][user]["addresses"]:
            if address in owner:
                raise ConfigError("users.%s.addresses" % user, "%s is %s's address already" % (address, owner[address]))
            owner[address] = user
    known = set(cfg["domains"])
    for address in owner:
        known.add(address.rpartition("@")[2])
    for key, target in cfg["forward"].items():
        where = "forward." + key
        if key not in cfg["users"] and key.lower() not in known:
            raise ConfigError(where, "%r is neither a user nor a domain of domains or of a user's address" % key)
        host, colon, port = target.partition(":")
        if not host or " " in target or colon and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(where, "%s is not host or host:port (port 1-65535)" % json.dumps(target))
    network(cfg["network"])


def network(net):
    """Static addressing takes ip, netmask and gateway together, the gateway
    on the box's own subnet; DHCP takes none of them."""
    if not net["ip"]:
        for k in ("netmask", "gateway", "dns"):
            if net[k]:
                raise ConfigError("network." + k, "is only used with a static network.ip (none: DHCP)")
        return
    for k in ("netmask", "gateway"):
        if not net[k]:
            raise ConfigError("network." + k, "must be set with a static network.ip")
    mask = _quad(net["netmask"])
    if mask == 0 or (mask | (mask - 1)) != 0xFFFFFFFF:
        raise ConfigError("network.netmask", "%s is not a netmask like 255.255.255.0" % net["netmask"])
    if _quad(net["ip"]) & mask != _quad(net["gateway"]) & mask:
        raise ConfigError("network.gateway", "%s is not on the subnet of network.ip %s/%s" % (
            net["gateway"], net["ip"], net["netmask"]))


def _quad(text):
    n = 0
    for q in text.split("."):
        n = n << 8 | int(q)
    return n


# Files a config names on the flash; checked where the flash is at hand
# (the box at start, `odmrgw config push` on the box), not by validate().
FILE_KEYS = ("smtp.cert", "smtp.key", "pop3.cert", "pop3.key", "relay.ca", "smarthost.ca")


def missing_file(cfg, exists=None):
    """ConfigError for the first file key naming a file that is not there
    (on this board's flash, or as exists(name) says), or None."""
    if exists is None:
        from gateway.spool import _exists as exists
    for key in FILE_KEYS:
        section, _, name = key.partition(".")
        path = cfg[section][name]
        if path and not exists(path):
            return ConfigError(key, "no file %s on the box's flash" % path)
    return None
