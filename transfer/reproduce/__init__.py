"""The paper's tables as data (``paper``) and the exact commands that reproduce each row
(``commands``); ``tools/reproduce.py`` is the command line (--list, --dry-run, --run, --collect)."""
