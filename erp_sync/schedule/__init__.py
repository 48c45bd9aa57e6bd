"""What a schedule is, without I/O where possible: cadences and slot times from settings
(``cadence``), and what beat has applied per company, which ``settings set --wait`` waits for
(``applied``). Beat, the alerts and the CLI build on it."""
