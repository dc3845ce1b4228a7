# Starts the gateway unless boot.py chose safe mode. Skipped when mpremote
# soft-resets through the raw REPL, so a box can always be repaired.
import board

board.main()
