"""The markdown tables of a bench's output, for the table scripts (router-table.py, ab-table.py,
layer-table.py)."""


def read_tables(source):
    """Each `|` table of `source` (a file's path, or its lines) as (header, rows): the header's
    cells and each row's cells, stripped, the `|---|` rule left out. A table ends at its first
    line outside it."""
    tables, current = [], None
    for line in open(source) if isinstance(source, str) else source:
        if not line.startswith("|"):
            current = None
            continue
        if line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is None:
            current = (cells, [])
            tables.append(current)
        else:
            current[1].append(cells)
    return tables
