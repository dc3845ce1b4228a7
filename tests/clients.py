"""Real mail clients from a chosen loopback address: the box lets one client
address hold only part of a listener's sessions, so tests that open many
sessions at once spread them over 127.0.0.0/8."""
import poplib
import socket


class POP3From(poplib.POP3):
    """poplib's client from a given loopback address (poplib has no source_address)."""

    def __init__(self, source, *args, **kw):
        self.source = source
        super().__init__(*args, **kw)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
