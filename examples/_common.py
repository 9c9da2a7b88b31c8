"""What every example shares: a --quick flag and a folder for the figures it draws."""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # figures go to files; no display needed

OUT = Path(__file__).resolve().parent / "out"


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run, for the tests")
    return p


def figure_path(name: str) -> Path:
    """examples/out/<name>, the folder created on first use."""
    OUT.mkdir(exist_ok=True)
    return OUT / name
