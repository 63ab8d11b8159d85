"""Pure decisions: no I/O, no clock, no SQL; plain values in, decisions out."""
