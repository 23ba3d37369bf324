"""The supervisor: detectors, policy, the daemon, the launcher, and the `trainwarden` command line (cli/)."""
