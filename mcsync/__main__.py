from mcsync.cli import main

main(prog_name="mcsync")
