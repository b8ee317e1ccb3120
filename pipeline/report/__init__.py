"""The release report: gates, release facts and canary of one run, for reviewers."""
