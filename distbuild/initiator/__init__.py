"""The initiator: submits a build of a definitions checkout and follows it."""
