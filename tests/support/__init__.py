"""Helpers that more than one test module uses, and the test bodies run against more than one deployment; never a
test module itself (no test_*.py here), so that no test module imports another."""
