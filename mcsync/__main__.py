import os

from mcsync.cli import main

if os.environ.get("MCSYNC_PEAK_RSS_FILE"):
    # `make bench` measures this process's own peak memory (see mcsync.ops.peak).
    from mcsync.ops.peak import report_peak_rss_at_exit

    report_peak_rss_at_exit(os.environ["MCSYNC_PEAK_RSS_FILE"])

main(prog_name="mcsync")
