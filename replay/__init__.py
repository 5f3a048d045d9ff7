"""Offline replay: re-score recorded traffic on another version and report, a promotion gate.

A tool beside the server, not part of it: it may import the server's parts (the audit
reader, the repository, backends, guard), and nothing in `service` imports it but the
`mlgate` CLI's wiring of its command.

    run     read the records, re-score candidate and baseline, compare (`replay`)
    cli     `mlgate replay`: arguments, exit status
    report  the self-contained HTML report
"""
