"""The subcommands of ``memoe``: fitting commands, commands on saved fits, demo and data sets."""
