"""What the tests share (no test module imports another): real processes on loopback
(:mod:`.processes`), raw HTTP over TCP (:mod:`.rawhttp`), a client of one node's API over
StubTreq (:mod:`.api`), in-process nodes wired as the daemon wires them (:mod:`.nodes`), and
results of Deferreds fired on fakes (:mod:`.deferreds`)."""
