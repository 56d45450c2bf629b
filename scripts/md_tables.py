"""The markdown tables of a bench's output, for the table scripts (router-table.py, ab-table.py,
layer-table.py)."""
import os


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


def size_table(source):
    """The first table of `source` whose first column is `tokens` (a layer bench's): size -> the
    row's cells by the header's names (of a name the header repeats, its last column). Empty
    where there is none."""
    for header, body in read_tables(source):
        if header[0] == "tokens":
            return {cells[0]: dict(zip(header, cells)) for cells in body}
    return {}


def nonempty(path):
    """Whether `path` is a file with something in it (a part a device call's limit cut leaves
    its file empty or missing)."""
    return os.path.exists(path) and os.path.getsize(path) > 0
