"""What operators and the daemon leave for each other in the state dir: live controls
(`controls`), the daemon's pacing by them (`pacing`), repair requests
(`repair_requests`). The status reads these; they never read the status.
"""
