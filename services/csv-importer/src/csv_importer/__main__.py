"""``python -m csv_importer``: read settings, log, serve (see ``csv_importer.service``)."""

from __future__ import annotations

from csv_importer.service import main

if __name__ == "__main__":
    main()
