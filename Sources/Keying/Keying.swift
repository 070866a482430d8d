// The keying layer: strongSwan charon over VICI. See the module documentation.
