"""The staging database: schema, migrations, run state, leases, the run log and its SQL."""
