"""The TOML configuration: pydantic models (models) and reading a file into them (load)."""
