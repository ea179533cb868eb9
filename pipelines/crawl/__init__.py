"""The WebText front end: from Reddit submission dumps to WARC files of the linked pages.

It owns reading the dumps (`dumps`), the URL rules and normalization (`urls`, `selection`), the
hash-partitioned URL de-duplication (`spill`), robots.txt (`robots`), the address and body limits
of a crawl (`netsafe`), the polite asyncio fetcher (`fetcher`) and the WARC writer with its resume
journal (`warc`). The entry points are `python -m pipelines.links` and `python -m pipelines.fetch`;
`python -m pipelines.build --input WARCS` takes it from there.

It imports nothing from megagpt, and from the rest of `pipelines` only the MPI world
(`pipelines.mpi`) and the work area with its claims (`pipelines.workarea`).
"""
