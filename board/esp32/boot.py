# Runs first at every reset and must return quickly: it only decides whether
# this boot is a safe-mode boot (boot button held, or too many crash-reboots
# in a row). main.py then starts the gateway, or leaves the REPL open.
import board

board.decide_safe_mode()
