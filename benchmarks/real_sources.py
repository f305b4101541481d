"""Extract the real public e-commerce logs we found in public GitHub snapshots into data/real/.

Each entry of ``SOURCES`` names one file (or a list of parts) committed to a public repository,
the commit we verified it at, the git blob id of every part (so a moved branch cannot change the
bytes silently), the ``--format`` our loader reads it with, and the dataset it was cut from.
The repositories must already be mirrored locally (the session tool ``fetch`` puts a bare git
directory at ``<mirror>/<owner>+<name>/repo``); nothing here touches the network.

For each source the script reads the parts with ``git cat-file``, decompresses ``.gz``/``.zip``
parts, concatenates them (one header kept), drops a last line cut off mid-row (no newline), and,
where the copy was cut inside one user's history, drops that user; it writes
``data/real/<name>/<file>`` through a temporary file and prints rows, users and date range.
With ``--fixtures DIR`` it also writes ``<name>_sample.csv`` (whole histories of a stable,
hash-ordered set of users, at most 2,000 rows) and ``<name>_sample.SOURCE.md`` to DIR. Usage:

    python benchmarks/real_sources.py [NAME ...] [--mirror DIR] [--out DIR] [--fixtures DIR]
    python benchmarks/real_sources.py --list

Exit status 2 when a mirror or a blob is missing; the message says which repository to fetch
and where the full official dataset can be downloaded by hand.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = Path("/work/.mirror")
DEFAULT_OUT = ROOT / "data" / "real"
FIXTURE_ROWS = 2000

TAOBAO_OFFICIAL = "https://tianchi.aliyun.com/dataset/649 (UserBehavior.csv.zip, about 100M rows)"
TAOBAO_LICENCE = ("Alibaba Tianchi dataset terms: free for non-commercial research with attribution "
                  "(cite Zhu et al., KDD 2018, 'Learning Tree-based Deep Model for Recommender "
                  "Systems'); the copying repository states no licence of its own")
REES46_OFFICIAL = ("https://www.kaggle.com/datasets/mkechinov/ecommerce-behavior-data-from-multi-category-store "
                   "(2019-Oct.csv, about 42M rows)")
REES46_LICENCE = ("REES46 Marketing Platform / Open CDP: published on Kaggle for free use with "
                  "attribution to REES46; the copying repository states no licence of its own")


@dataclass(frozen=True)
class RealSource:
    name: str
    repo: str  # owner/name on GitHub
    commit: str  # the snapshot commit the parts were verified at
    parts: tuple[tuple[str, str], ...]  # (path in the repository, git blob id), concatenated in order
    fmt: str  # value for `fedinterest ... --format`
    output: str  # file name under data/real/<name>/
    dataset: str
    licence: str
    official: str  # where the full dataset can be downloaded by hand
    notes: str  # what our loader needs, and caveats
    header: bool  # parts start with a header line
    drop_last_user: bool = False  # the copy was cut inside the last user's history


SOURCES: tuple[RealSource, ...] = (
    RealSource(
        name="taobao_head",
        repo="Haohanblue/mydeep",
        commit="ef812addc2c164f1d3ef48564a5c393ec293bc61",
        parts=(("mydeep/UserBehavior.csv", "4715676a303c2cfca808435360df0e0cd20ff204"),),
        fmt="taobao",
        output="UserBehavior.csv",
        dataset="Taobao UserBehavior (Alibaba Tianchi), 2017-11-25..2017-12-03 UTC+8",
        licence=TAOBAO_LICENCE,
        official=TAOBAO_OFFICIAL,
        notes=("First 3,178,496 bytes of the official file, which is grouped by user: complete "
               "histories of its first 814 users. The copy ends mid-row inside user 100370, whose "
               "rows are dropped. Headerless; --format taobao. Holds genuine out-of-window rows "
               "(before 2017-11-25 UTC+8)."),
        header=False,
        drop_last_user=True,
    ),
    RealSource(
        name="taobao_slice",
        repo="clglyj/flink-streaming",
        commit="00850c903fb6e34860ca5771c3a269bad20c525e",
        parts=(("input/UserBehavior.csv", "3edb23d233af7e1f9b954050166f53934f2ce171"),),
        fmt="taobao",
        output="UserBehavior.csv",
        dataset="Taobao UserBehavior (Alibaba Tianchi), time-sorted excerpt used by a Flink course",
        licence=TAOBAO_LICENCE,
        official=TAOBAO_OFFICIAL,
        notes=("All events of 2017-11-26 09:00-10:28 UTC+8 as redistributed with the 'atguigu' "
               "Flink user-behaviour course (rows sorted by time): many users, about 1.6 events "
               "each, under 1.5 hours, so no daily-grid examples; a load/scale check only. "
               "Headerless; --format taobao."),
        header=False,
    ),
    RealSource(
        name="taobao_tail",
        repo="betashepherd/HotItems",
        commit="c7c2d28e15fcad625590672d607cd49827d8121b",
        parts=(("src/main/resources/UserBehavior.csv", "bff8365771b085996f3584ab9adf41cfd3f94f65"),),
        fmt="taobao",
        output="UserBehavior.csv",
        dataset="Taobao UserBehavior (Alibaba Tianchi), 2017-11-25..2017-12-03 UTC+8",
        licence=TAOBAO_LICENCE,
        official=TAOBAO_OFFICIAL,
        notes=("10,000 rows that end the official file (grouped by user, users in string order; the "
               "copy ends with user 999999), as copied into a Flink HotItems demo: histories of 114 "
               "users (999477..999999), none shared with taobao_head. The first user (999477) starts "
               "2017-11-28 and was probably cut at the start of the copy; the script cannot drop a "
               "first user, so it is kept. Small: a disjoint-user check only, not a training set. "
               "Headerless; --format taobao. Holds genuine out-of-window rows (before 2017-11-25 UTC+8)."),
        header=False,
    ),
    RealSource(
        name="rees46_head",
        repo="ibrhmspl/Team11_Customer_Segmentation",
        commit="b2d3e846e15a9e5f91d5e04793ffee218715b22e",
        parts=(("2019-Oct.csv", "dcaf96d36e38c10326a514900151866ee75e9717"),),
        fmt="rees46",
        output="2019-Oct.csv",
        dataset="REES46 'eCommerce behavior data from multi category store', October 2019",
        licence=REES46_LICENCE,
        official=REES46_OFFICIAL,
        notes=("Leading excerpt of 2019-Oct.csv (time-sorted): 2019-10-01 00:00-02:50 UTC, cut "
               "mid-row at 2,344,707 bytes (that row is dropped). Has category_code names "
               "(e.g. electronics.smartphone) on about 2/3 of rows. Under 3 hours, so no "
               "daily-grid examples; --format rees46."),
        header=True,
    ),
)

TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
TAOBAO_WINDOW = (pd.Timestamp("2017-11-25", tz="Asia/Shanghai"), pd.Timestamp("2017-12-04", tz="Asia/Shanghai"))


def outside_window(frame: pd.DataFrame) -> pd.Series:
    """Rows of a Taobao frame outside the documented 2017-11-25..2017-12-03 (UTC+8) window."""
    return (frame["time"] < TAOBAO_WINDOW[0]) | (frame["time"] >= TAOBAO_WINDOW[1])


def git_dir(mirror: Path, repo: str) -> Path | None:
    base = mirror / repo.replace("/", "+") / "repo"
    for candidate in (base / ".git", base):
        if (candidate / "objects").is_dir():
            return candidate
    return None


def missing(source: RealSource, why: str) -> SystemExit:
    print(f"{source.name}: {why}\n  fetch the snapshot of github:{source.repo} (session tool `fetch`), "
          f"verified at commit {source.commit};\n  or download the full dataset by hand from "
          f"{source.official}", file=sys.stderr)
    return SystemExit(2)


def read_part(gdir: Path, source: RealSource, path: str, blob: str) -> bytes:
    at_commit = subprocess.run(["git", "--git-dir", str(gdir), "rev-parse", "--verify", "-q",
                                f"{source.commit}:{path}"], capture_output=True, text=True)
    if at_commit.returncode == 0 and at_commit.stdout.strip() != blob:
        raise missing(source, f"{path} at {source.commit[:12]} is blob {at_commit.stdout.strip()}, expected {blob}")
    result = subprocess.run(["git", "--git-dir", str(gdir), "cat-file", "blob", blob], capture_output=True)
    if result.returncode:
        raise missing(source, f"the mirror at {gdir} lacks blob {blob} ({path}); files of 4 MiB and "
                              "more and Git LFS content never arrive in a snapshot")
    data = result.stdout
    if data.startswith(b"version https://git-lfs"):
        raise missing(source, f"{path} is a Git LFS pointer, not data")
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = b"".join(archive.read(n) for n in archive.namelist() if not n.endswith("/"))
    return data


def whole_lines(data: bytes) -> list[str]:
    """Lines of one part, without a last line that was cut off (no newline after it)."""
    text = data.decode("utf-8")
    lines = text.split("\n")
    lines.pop()  # "" after a final newline, or a row cut off mid-way
    return [line.rstrip("\r") for line in lines if line.strip()]


def user_field(source: RealSource, line: str) -> str:
    return line.split(",")[0] if source.fmt == "taobao" else line.split(",")[7]


def extract(source: RealSource, mirror: Path, out: Path) -> Path:
    gdir = git_dir(mirror, source.repo)
    if gdir is None:
        raise missing(source, f"no mirror at {mirror / source.repo.replace('/', '+')}")
    header: str | None = None
    rows: list[str] = []
    for path, blob in source.parts:
        lines = whole_lines(read_part(gdir, source, path, blob))
        if source.header:
            header, lines = header or lines[0], lines[1:]
        rows.extend(lines)
    if source.drop_last_user:
        last = user_field(source, rows[-1])
        rows = [r for r in rows if user_field(source, r) != last]
    target = out / source.name / source.output
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=target.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write("".join(line + "\n" for line in ([header] if header else []) + rows))
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, target)
    return target


def load_frame(source: RealSource, path: Path) -> pd.DataFrame:
    """The extracted file with canonical user/item/category/time columns, for summaries and cuts."""
    if source.fmt == "taobao":
        raw = pd.read_csv(path, header=None, names=TAOBAO_COLUMNS)
        time = pd.to_datetime(raw["timestamp"], unit="s", utc=True).dt.tz_convert("Asia/Shanghai")
        return raw.assign(user=raw["user_id"], item=raw["item_id"], category=raw["category_id"], time=time)
    if source.fmt == "rees46":
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
        time = pd.to_datetime(raw["event_time"], format="%Y-%m-%d %H:%M:%S UTC", utc=True)
        return raw.assign(user=raw["user_id"], item=raw["product_id"], category=raw["category_id"], time=time)
    raise ValueError(f"no summary reader for format {source.fmt}")


def summary(source: RealSource, frame: pd.DataFrame) -> str:
    lines = [f"{len(frame):,} rows, {frame['user'].nunique():,} users, {frame['item'].nunique():,} items, "
             f"{frame['category'].nunique():,} categories; {frame['time'].min()} .. {frame['time'].max()}"]
    if source.fmt == "rees46":
        named = frame["category_code"] != ""
        distinct = frame.loc[named, "category_code"].nunique()
        lines.append(f"category names on {named.mean():.0%} of rows, {distinct:,} distinct")
    if source.fmt == "taobao":
        outside = frame[outside_window(frame)]
        span = f" ({outside['time'].min()} .. {outside['time'].max()})" if len(outside) else ""
        lines.append(f"{len(outside):,} rows outside 2017-11-25..2017-12-03 UTC+8{span}")
    return "\n  ".join(lines)


def stable_key(user: object) -> str:
    return hashlib.sha1(str(user).encode()).hexdigest()


def fixture_users(source: RealSource, frame: pd.DataFrame) -> list[object]:
    """Whole-history users for a fixture of at most FIXTURE_ROWS rows, in a stable hash order.

    Taobao: first the user with the earliest out-of-window event and the three smallest other
    histories that have out-of-window events, so the fixture keeps some genuine outliers.
    """
    sizes = frame.groupby("user").size()
    chosen: list[object] = []
    if source.fmt == "taobao":
        outside = frame[outside_window(frame)]
        if len(outside):
            earliest = outside.sort_values("time")["user"].iloc[0]
            others = sizes[outside["user"].unique()].drop(earliest).sort_values()
            chosen = [earliest, *others.index[:3]]
    budget = FIXTURE_ROWS - int(sizes[chosen].sum())
    for user in sorted(sizes.index, key=stable_key):
        if user not in chosen and sizes[user] <= budget:
            chosen.append(user)
            budget -= int(sizes[user])
    return chosen


SOURCE_MD = """# {name}_sample.csv

- Original dataset: {dataset}
- Licence / terms (as far as known): {licence}
- Full dataset: {official}
- Cut from: github.com/{repo} at commit `{commit}`, {paths} (git blob {blobs}),
  extracted by `benchmarks/real_sources.py {name}` ({notes})
- Format: `--format {fmt}`; same layout as the source{header_note}.
- How the cut was made: whole histories of {users} users ({rows} rows, at most {limit}), chosen by
  `fixture_users` in `benchmarks/real_sources.py`: {rule}; rows keep the source file's order.
- Contents: {stats}
- Regenerate: `python benchmarks/real_sources.py {name} --fixtures tests/fixtures`
"""


def write_fixture(source: RealSource, extracted: Path, frame: pd.DataFrame, directory: Path) -> Path:
    users = set(fixture_users(source, frame))
    keep = frame["user"].isin(users).to_numpy()
    with open(extracted) as src:
        lines = src.read().splitlines()
    header, body = (lines[:1], lines[1:]) if source.header else ([], lines)
    cut = [line for line, k in zip(body, keep) if k]
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source.name}_sample.csv"
    target.write_text("".join(line + "\n" for line in header + cut))
    outliers = source.fmt == "taobao" and bool(outside_window(frame).any())
    rule = ("users taken in order of sha1(user id), skipping any whose whole history no longer fits"
            + ("; first the user with the earliest out-of-window event and the three smallest other "
               "histories with out-of-window events" if outliers else ""))
    (directory / f"{source.name}_sample.SOURCE.md").write_text(SOURCE_MD.format(
        name=source.name, dataset=source.dataset, licence=source.licence, official=source.official,
        repo=source.repo, commit=source.commit, paths=", ".join(f"`{p}`" for p, _ in source.parts),
        blobs=", ".join(f"`{b}`" for _, b in source.parts), notes=source.notes, fmt=source.fmt,
        header_note=" (with its header line)" if source.header else " (no header line)",
        users=len(users), rows=len(cut), limit=FIXTURE_ROWS, rule=rule,
        stats=summary(source, frame[keep]).replace("\n  ", "; ")))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="sources to extract (default: all)")
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="root of the local repository mirrors")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where <name>/<file> is written")
    parser.add_argument("--fixtures", type=Path, metavar="DIR", help="also write <name>_sample.csv and .SOURCE.md here")
    parser.add_argument("--list", action="store_true", help="describe the declared sources and exit")
    args = parser.parse_args()
    by_name = {s.name: s for s in SOURCES}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    selected = [by_name[n] for n in args.names] or list(SOURCES)
    if args.list:
        for s in selected:
            parts = ", ".join(p for p, _ in s.parts)
            print(f"{s.name}: --format {s.fmt}\n  github.com/{s.repo} @ {s.commit}: {parts}\n  dataset: {s.dataset}\n"
                  f"  licence: {s.licence}\n  full data: {s.official}\n  notes: {s.notes}")
        return
    for source in selected:
        target = extract(source, args.mirror, args.out)
        frame = load_frame(source, target)
        print(f"{source.name} -> {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} "
              f"(--format {source.fmt})\n  {summary(source, frame)}")
        if args.fixtures:
            print(f"  fixture -> {write_fixture(source, target, frame, args.fixtures)}")


if __name__ == "__main__":
    main()
