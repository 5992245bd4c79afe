"""The line daemon: drives every station of a line through the provisioning sequence."""
