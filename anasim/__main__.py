"""``python -m anasim`` is the ``anasim`` command."""

from .cli import main

raise SystemExit(main())
