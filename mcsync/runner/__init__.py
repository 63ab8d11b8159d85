"""Running audiences: the resumable state machine of one audience and the loop over audiences."""
