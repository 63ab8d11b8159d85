"""What the commands do besides syncing: status, preview, abort, checks and discover, demo."""
