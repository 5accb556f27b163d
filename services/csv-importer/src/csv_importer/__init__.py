"""Tributary CSV importer: CSV uploads as tracked, resumable import jobs."""
