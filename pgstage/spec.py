"""TOML pipeline spec → frozen, validated objects; every problem reported at once with file:line.

Steps never see dicts: they get a `Spec`. Cross-field rules (a version column must be a
target column, a key column must exist, ...) are checked here so that a bad spec fails
before any database work, with exit code 2.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pgstage.errors import SpecError
from pgstage.names import AUDIT_COLUMNS

Strategy = Literal["insert_only", "upsert", "upsert_if_newer", "replace_partition", "scd2", "append"]
KEYLESS_STRATEGIES = ("replace_partition", "append")   # strategies whose key is optional (append: none)
Normalizer = Literal["trim", "lower", "upper"]

MONEY_CENTS = "money_cents"
_DURATION = r"^\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)?\s*$"
_SPAN = r"^\s*\d+(\.\d+)?\s*(ms|s|min|h|d)\s*$"   # a unit is required: "30" could mean ms or s
_MEMORY = r"^\s*\d+\s*(kB|MB|GB)\s*$"
_BYTES = r"^\s*\d+\s*(B|kB|MB|GB|TB)?\s*$"
_NAME = re.compile(r"^[^\x00]{1,63}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class PartitionSpec(_Model):
    """`partition = { column = "ordered_at", grain = "day" }`: what `--partition DATE` selects."""

    column: str
    grain: Literal["day", "month"] = "day"
    timezone: str = Field(default="UTC", min_length=1)   # whose midnight starts a day (timestamptz columns)
    native: bool = False   # the target is declaratively partitioned by `column`; a day is swapped in whole


class SurrogateKey(_Model):
    """`surrogate_key = { column = "id", kind = "uuid" }`: a surrogate primary key beside the business key."""

    column: str = Field(pattern=r"^[^_\x00][^\x00]{0,62}$")
    kind: Literal["uuid", "hash"] = "uuid"   # uuid: random, kept for the row's life; hash: from the key's values


class PipelineSection(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    target: str
    key: tuple[str, ...] = ()
    strategy: Strategy = "upsert"
    version: str | None = None
    partition: PartitionSpec | None = None
    surrogate_key: SurrogateKey | None = None

    @model_validator(mode="after")
    def _key_and_partition(self) -> "PipelineSection":
        if not self.key and self.strategy not in KEYLESS_STRATEGIES:
            raise ValueError(f"key is missing: strategy {self.strategy} needs the business key"
                             " (e.g. key = [\"id\"])")
        if self.strategy == "append" and (self.key or self.surrogate_key or self.version):
            raise ValueError("append takes no key, surrogate_key or version: every record is a row, identified by"
                             " _source_file and _record")
        if self.strategy == "replace_partition" and self.partition is None:
            raise ValueError("replace_partition needs partition = { column = \"...\", grain = \"day\" }:"
                             " the column whose day (or month) a run replaces")
        if self.partition is not None and self.partition.native and self.strategy != "replace_partition":
            raise ValueError("partition.native applies to strategy = \"replace_partition\" only")
        if self.surrogate_key is not None:
            if not self.key:
                raise ValueError("surrogate_key needs the business key it stands for (key = [...])")
            if self.strategy == "scd2":
                raise ValueError("scd2 rows have their own id, _scd_id (one per version): remove surrogate_key")
            if self.partition is not None and self.partition.native:
                raise ValueError("surrogate_key cannot be the primary key of a natively partitioned target"
                                 " (PostgreSQL requires the partition column in it); drop one of the two")
        return self

    @field_validator("target")
    @classmethod
    def _schema_dot_table(cls, value: str) -> str:
        split_target(value)
        return value


SourceKind = Literal["csv", "jsonl", "parquet", "postgres"]
CSV_ONLY = ("delimiter", "quote", "encoding", "header")
POSTGRES_ONLY = ("url", "table", "inserted_at", "updated_at", "deleted_at", "lookback", "on_delete", "statement_timeout")


class SourceSection(_Model):
    kind: SourceKind = "csv"
    path: str | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote: str = Field(default='"', min_length=1, max_length=1)
    encoding: str = "utf-8"
    header: bool = True
    null: tuple[str, ...] = ()
    allow_missing: bool = False
    on_new_fields: Literal["ignore", "fail", "keep_raw"] = "ignore"
    # kind = "postgres": change data capture from a table by watermark (docs/sources/postgres.md)
    url: str | None = Field(default=None, repr=False)   # may hold a password: kept out of every repr
    table: str | None = None
    inserted_at: str | None = None
    updated_at: str | None = None
    deleted_at: str | None = None
    lookback: str = "5 minutes"
    on_delete: Literal["mark", "delete"] = "mark"
    statement_timeout: str = Field(default="1h", pattern=_DURATION)

    @field_validator(*POSTGRES_ONLY)
    @classmethod
    def _postgres_only(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind", "csv")
        if kind != "postgres":
            raise ValueError(f"applies to kind = \"postgres\" only; a {kind} source has no {info.field_name}"
                             " (remove the key)")
        return value

    @field_validator("table")
    @classmethod
    def _schema_dot_table(cls, value: str | None) -> str | None:
        if value is not None:
            split_target(value)
        return value

    @model_validator(mode="after")
    def _where_from(self) -> "SourceSection":
        if self.kind == "postgres":
            missing = [k for k in ("table", "updated_at") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"a postgres source needs {' and '.join(missing)}"
                                 " (the source table and its last-change column)")
            if self.path is not None:
                raise ValueError("a postgres source reads `table`, not `path` (remove path)")
            if "on_delete" in self.model_fields_set and self.deleted_at is None:
                raise ValueError("on_delete needs deleted_at, the column that marks a row deleted")
        elif self.path is None:
            raise ValueError("path is missing (required): the file(s) to load")
        return self

    def table_name(self) -> tuple[str, str]:
        """The source table of a postgres source, split once."""
        return split_target(self.table or "")

    @field_validator(*CSV_ONLY)
    @classmethod
    def _csv_only(cls, value: Any, info: ValidationInfo) -> Any:
        """Refused rather than ignored: a delimiter given for JSON Lines is a spec that says something untrue."""
        kind = info.data.get("kind", "csv")
        if kind != "csv":
            raise ValueError(f"applies to CSV only; a {kind} source has no {info.field_name} (remove the key)")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            pg_encoding(value)
        except LookupError:
            raise ValueError(f"encoding {value!r} is not one pgstage can stream into PostgreSQL;"
                             f" use one of {', '.join(sorted(set(PG_ENCODINGS)))}") from None
        return value


# Python codec name -> the name COPY's ENCODING option takes. A BOM is skipped before COPY,
# so utf-8-sig is plain UTF8 there.
PG_ENCODINGS = {
    "utf-8": "UTF8", "utf-8-sig": "UTF8", "iso8859-1": "LATIN1", "cp1252": "WIN1252", "iso8859-15": "LATIN9",
    "cp1251": "WIN1251", "cp1250": "WIN1250", "ascii": "SQL_ASCII", "shift_jis": "SJIS", "euc_jp": "EUC_JP",
    "gbk": "GBK", "big5": "BIG5", "koi8-r": "KOI8R", "iso8859-2": "LATIN2",
}


def pg_encoding(name: str) -> str:
    """COPY's name for a Python encoding name; LookupError when PostgreSQL cannot read it."""
    import codecs

    return PG_ENCODINGS[codecs.lookup(name).name]


Scalar = str | int | float | bool


class ColumnSpec(_Model):
    const: Scalar | None = None
    from_: str | None = Field(default=None, alias="from")
    type: str = "text"
    required: bool = False
    normalize: tuple[Normalizer, ...] = ()
    map: dict[str, str] | None = None
    format: str | None = None
    timezone: str | None = None
    zero_is_null: bool = False
    allow_special: bool = False
    min: float | None = None
    max: float | None = None
    regex: str | None = None
    in_: tuple[str, ...] | None = Field(default=None, alias="in")
    references: str | None = None
    unique: bool = False
    renamed_from: str | None = Field(default=None, pattern=r"^[^\x00]{1,63}$")   # `pgstage migrate` renames it

    @field_validator("references")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None:
            ref = parse_reference(value)
            if len(ref.columns) != 1:
                raise ValueError("a column references ONE column, e.g. \"sales.customers(id)\";"
                                 " use a [references] entry for several")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> "ColumnSpec":
        if (self.const is None) == (self.from_ is None):
            raise ValueError("give exactly one of `from` (a source field) or `const` (a fixed value)")
        if self.const is not None and any(
            (self.normalize, self.map, self.format, self.regex, self.in_, self.min is not None, self.max is not None)
        ):
            raise ValueError("a `const` column takes no rules or conversions")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return self

    @property
    def pg_type(self) -> str:
        """The PostgreSQL type of the target column (money_cents lands as bigint)."""
        return "bigint" if self.type == MONEY_CENTS else self.type


class Scd2Section(_Model):
    """`[scd2]`: how a history of versions treats keys a full snapshot lacks, and which columns open a version."""

    on_missing: Literal["ignore", "close", "new_record"] = "ignore"
    track: tuple[str, ...] | None = Field(default=None, min_length=1)


class LoadSection(_Model):
    batch_rows: int = Field(default=1_000_000, gt=0)
    max_reject_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    index_strategy: Literal["keep", "rebuild", "auto"] = "auto"
    lock_timeout: str = Field(default="10s", pattern=_DURATION)
    statement_timeout: str = Field(default="0", pattern=_DURATION)
    idle_in_transaction_session_timeout: str = Field(default="10min", pattern=_DURATION)
    max_retries: int = Field(default=5, ge=0, le=50)
    max_rejects: int | None = Field(default=None, ge=0)
    raw_column: str | None = Field(default=None, pattern=r"^[^\x00]{1,63}$")
    work_mem: str = Field(default="256MB", pattern=_MEMORY)
    maintenance_work_mem: str = Field(default="512MB", pattern=_MEMORY)   # index rebuilds
    workers: int = Field(default=2, ge=1, le=16)
    # Production safety (docs/production.md): pause while the primary is under pressure, and
    # bound each merge transaction.
    max_replica_lag: str | None = Field(default=None, pattern=_SPAN)
    max_replica_lag_bytes: str | None = Field(default=None, pattern=_BYTES)
    max_active_sessions: int | None = Field(default=None, ge=1)
    throttle_query: str | None = Field(default=None, min_length=1)
    throttle_timeout: str = Field(default="10min", pattern=_SPAN)
    merge_chunk_rows: int | None = Field(default=None, gt=0)
    reconcile: Literal["never", "after_run"] = "never"   # after_run: compare with the source after each success


AlertEvent = Literal["failed", "rejects", "anomaly", "late", "reconcile", "recovered", "paused"]


class AnomalySection(_Model):
    """`[anomaly]`: how a run's volume is judged against its history (pgstage/ops/anomalies.py)."""

    action: Literal["warn", "block", "off"] = "warn"
    min_runs: int = Field(default=7, ge=1)              # earlier successful runs before any verdict
    min_same_weekday: int = Field(default=2, ge=1)      # of them on the day's weekday
    relative: float = Field(default=0.5, gt=0)          # both must be exceeded to flag
    absolute: int = Field(default=100, ge=0)
    score: float = Field(default=3.5, gt=0)             # robust z-score (median/MAD) that must also be exceeded


class AlertsSection(_Model):
    """`[alerts]`: where and when to tell people (pgstage/ops/alerts.py). URLs may hold secrets: no repr."""

    on: tuple[AlertEvent, ...] = ("failed", "rejects", "anomaly", "late", "reconcile", "recovered", "paused")
    webhook: str | None = Field(default=None, repr=False)
    slack: str | None = Field(default=None, repr=False)
    apprise: tuple[str, ...] = Field(default=(), repr=False)
    suppress: str = Field(default="30min", pattern=_DURATION)
    timeout: str = Field(default="5s", pattern=_DURATION)
    retries: int = Field(default=2, ge=0, le=10)
    late: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")   # HH:MM UTC, the day after the partition
    # A throttle pause still on after this long sends `paused` (once per run attempt); half the
    # default throttle_timeout, so people hear of a stuck replica before the run gives up.
    paused_after: str = Field(default="5min", pattern=_DURATION)
    # a merged run whose reject ratio is above this also sends `rejects` (0: any reject); None: only a run
    # refused by max_reject_ratio does
    rejects_above: float | None = Field(default=None, ge=0, le=1)
    # an alert of a run writes the run's HTML page here (run-<id>.html) and links it in the payload;
    # report_url: where that directory is published (the link is then that URL, else the file's path)
    report_dir: str | None = None
    report_url: str | None = Field(default=None, repr=False)


class CompositeReference(_Model):
    """`[references] name = { cols = ["a", "b"], to = "schema.table(x, y)" }`."""

    cols: tuple[str, ...] = Field(min_length=1)
    to: str

    @model_validator(mode="after")
    def _arity(self) -> "CompositeReference":
        if len(parse_reference(self.to).columns) != len(self.cols):
            raise ValueError(f"cols names {len(self.cols)} column(s) but `to` names {len(parse_reference(self.to).columns)}")
        return self


class Reference(BaseModel):
    """A referenced table and its columns, split once."""

    model_config = ConfigDict(frozen=True)
    schema_: str
    table: str
    columns: tuple[str, ...]


_REFERENCE = re.compile(r"^\s*(?:([A-Za-z_][A-Za-z0-9_$]*)\.)?([A-Za-z_][A-Za-z0-9_$]*)\s*\(([^()]*)\)\s*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def parse_reference(text: str) -> Reference:
    """`schema.table(col, ...)` → Reference; a bare table is in `public`."""
    found = _REFERENCE.match(text)
    columns = tuple(c.strip() for c in found.group(3).split(",")) if found else ()
    if not found or not columns or not all(_IDENT.match(c) for c in columns):
        raise ValueError(f"{text!r} is not schema.table(column, ...)")
    return Reference(schema_=found.group(1) or "public", table=found.group(2), columns=columns)


class IndexSpec(_Model):
    """`[indexes] name = { columns = ["a", "b desc"], where = "...", unique = false }` (declared_indexes.py)."""

    columns: tuple[str, ...] = Field(min_length=1)
    where: str | None = None
    unique: bool = False


class Spec(_Model):
    pipeline: PipelineSection
    source: SourceSection
    columns: dict[str, ColumnSpec] = Field(min_length=1)
    checks: dict[str, str] = Field(default_factory=dict)
    references: dict[str, CompositeReference] = Field(default_factory=dict)
    indexes: dict[str, IndexSpec] = Field(default_factory=dict)
    load: LoadSection = LoadSection()
    anomaly: AnomalySection = AnomalySection()
    alerts: AlertsSection = AlertsSection()
    scd2: Scd2Section = Scd2Section()
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _names(self) -> "Spec":
        bad = [n for n in self.columns if not _NAME.match(n) or n.startswith("_")]
        if bad:
            raise ValueError(f"column names are 1-63 characters and may not start with '_' (reserved): {bad}")
        raw = self.load.raw_column
        if raw is not None and (raw in self.columns or raw in AUDIT_COLUMNS):
            raise ValueError(f"load.raw_column {raw!r} is already a column")
        if "scd2" in self.model_fields_set and self.pipeline.strategy != "scd2":
            raise ValueError("[scd2] applies to strategy = \"scd2\" only (remove the section)")
        bad_track = [c for c in self.scd2.track or () if c not in self.columns or c in self.pipeline.key]
        if bad_track:
            raise ValueError(f"scd2.track lists {bad_track}: tracked columns are columns outside the key")
        surrogate = self.pipeline.surrogate_key
        if surrogate is not None and (surrogate.column in self.columns or surrogate.column == raw):
            raise ValueError(f"surrogate_key.column {surrogate.column!r} is already a column; name it apart")
        if self.source.on_new_fields == "keep_raw" and raw is None:
            raise ValueError("source.on_new_fields = \"keep_raw\" needs load.raw_column, the JSONB column that keeps them")
        return self

    @property
    def target(self) -> tuple[str, str]:
        return split_target(self.pipeline.target)

    def source_fields(self) -> list[str]:
        """Source header names the spec reads, in column order, without repeats."""
        seen: dict[str, None] = {}
        for column in self.columns.values():
            if column.from_ is not None:
                seen.setdefault(column.from_, None)
        return list(seen)


def split_target(target: str) -> tuple[str, str]:
    """The one place a spec's `schema.table` is split; a bare table lands in `public`."""
    parts = target.split(".")
    if len(parts) == 1 and parts[0]:
        return "public", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ValueError(f"target must be schema.table, got {target!r}")


def _did_you_mean(word: str, choices: list[str]) -> str:
    """A suggestion for a misspelt name; transposed letters (`form` for `from`) win over near prefixes."""
    swapped = [c for c in choices if sorted(c.lower()) == sorted(word.lower())]
    close = swapped or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _raw_cross_checks(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """The key/version checks on the raw TOML, so they are reported even when other fields fail."""
    raw_pipeline, raw_columns = data.get("pipeline"), data.get("columns")
    pipeline: dict[str, Any] = raw_pipeline if isinstance(raw_pipeline, dict) else {}
    columns: dict[str, Any] = raw_columns if isinstance(raw_columns, dict) else {}
    names = [str(n) for n in columns]
    found: list[tuple[tuple[str, ...], str]] = []
    raw_keys = pipeline.get("key")
    keys: list[Any] = raw_keys if isinstance(raw_keys, list) else []
    for key in keys:
        if isinstance(key, str) and key not in columns:
            found.append((("pipeline", "key"), f"{key!r} is not a column{_did_you_mean(key, names)}"))
    raw_refs = data.get("references")
    for ref_name, ref in (raw_refs.items() if isinstance(raw_refs, dict) else []):
        for col in (ref.get("cols") or []) if isinstance(ref, dict) else []:
            if isinstance(col, str) and col not in columns:
                found.append((("references", str(ref_name)), f"{col!r} is not a column{_did_you_mean(col, names)}"))
    partition = pipeline.get("partition")
    column = partition.get("column") if isinstance(partition, dict) else None
    if isinstance(column, str) and column not in columns:
        found.append((("pipeline", "partition"), f"column {column!r} is not a column{_did_you_mean(column, names)}"))
    version = pipeline.get("version")
    if pipeline.get("strategy") == "upsert_if_newer" and version is None:
        found.append((("pipeline", "version"), "upsert_if_newer needs a version column (e.g. updated_at)"))
    if isinstance(version, str) and version not in columns:
        found.append((("pipeline", "version"), f"{version!r} is not a column{_did_you_mean(version, names)}"))
    return found


_FIELDS_BY_MODEL: dict[str, type[BaseModel]] = {
    "pipeline": PipelineSection,
    "source": SourceSection,
    "load": LoadSection,
    "anomaly": AnomalySection,
    "alerts": AlertsSection,
    "scd2": Scd2Section,
}


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Known keys at the place an unknown key was found, for the did-you-mean hint."""
    if len(loc) == 2 and loc[0] in _FIELDS_BY_MODEL:
        model = _FIELDS_BY_MODEL[loc[0]]
    elif len(loc) == 3 and loc[0] == "columns":
        model = ColumnSpec
    elif len(loc) == 3 and loc[0] == "indexes":
        model = IndexSpec
    elif len(loc) == 1:
        model = Spec
    else:
        return []
    return [f.alias or name for name, f in model.model_fields.items() if name != "path"]


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib keeps no positions)."""
    lines = text.splitlines()
    section = str(loc[0]) if loc else ""
    start = 0
    for number, line in enumerate(lines):
        if line.strip() == f"[{section}]":
            start = number
            break
    for depth in range(min(len(loc), 3), 0, -1):
        key = str(loc[depth - 1])
        pattern = re.compile(rf'^\s*("{re.escape(key)}"|{re.escape(key)})\s*=|[{{,]\s*("{re.escape(key)}"|{re.escape(key)})\s*=')
        for number in range(start, len(lines)):
            if number > start and lines[number].lstrip().startswith("[") and depth == 1:
                break
            if pattern.search(lines[number]):
                return number + 1
    return start + 1 if loc else None


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key{_did_you_mean(str(loc[-1]), _allowed_keys(loc))}"
    if kind == "missing":
        return "missing (required)"
    if kind == "string_pattern_mismatch" and (wanted := _PATTERN_WORDS.get(error.get("ctx", {}).get("pattern", ""))):
        return f"expected {wanted}, got {error.get('input')!r}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


_PATTERN_WORDS = {_DURATION: 'a duration such as "10s" or "500ms"', _SPAN: 'a duration with its unit, such as "30s" or "10min"',
                  _MEMORY: 'a size such as "256MB"', _BYTES: 'a size such as "1GB" or "64MB"'}


def parse_spec(text: str, path: Path | None = None) -> Spec:
    """Parse spec text; raise one SpecError listing every problem as `file:line: key: message`."""
    name = str(path) if path else "<spec>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{name}: not valid TOML: {exc}", hint="fix the TOML syntax at the position shown") from None
    problems = []
    spec = None
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = ".".join(str(p) for p in loc) or "spec"
            problems.append(f"{name}:{_line_of(text, loc)}: {dotted}: {_describe(error)}")
    for loc, message in _raw_cross_checks(data):
        problems.append(f"{name}:{_line_of(text, loc)}: {'.'.join(loc)}: {message}")
    if spec is not None and spec.checks:
        from pgstage.checks import validate_checks   # sqlglot only for a spec with checks

        try:
            validate_checks(spec.checks, {c: col.pg_type for c, col in spec.columns.items()},
                            locate=lambda check: f"{name}:{_line_of(text, ('checks', check))}")
        except SpecError as exc:
            problems += exc.problems
    if spec is not None and spec.indexes:
        problems += _index_problems(spec, lambda index: f"{name}:{_line_of(text, ('indexes', index))}")
    if problems or spec is None:
        raise SpecError(f"{name}: {len(problems)} problem(s) in the pipeline spec", problems=tuple(problems),
                        hint="see docs/spec.md for every field")
    return spec.model_copy(update={"path": path})


def _index_problems(spec: Spec, locate: Any) -> list[str]:
    """Every problem of `[indexes]`: bad names, unknown columns, a `where` that is not one condition."""
    from pgstage.declared_indexes import check_keys, compile_where

    columns = {c: col.pg_type for c, col in spec.columns.items()}
    found = []
    for index, declared in spec.indexes.items():
        if not _NAME.match(index):
            found.append(f"{locate(index)}: indexes.{index}: an index name is 1-63 characters")
        found += [f"{locate(index)}: indexes.{index}.columns: {p}" for p in check_keys(declared.columns, columns)]
        if declared.where is not None:
            try:
                compile_where(index, declared.where, columns)
            except SpecError as exc:
                found.append(f"{locate(index)}: {exc.message.removeprefix('checks.')}")
    return found


def load_spec(path: str | Path) -> Spec:
    """Read and validate a pipeline spec file."""
    spec_path = Path(path)
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{spec_path}: spec file not found", hint="check the path; specs are TOML files") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{spec_path}: cannot read spec: {exc}") from None
    return parse_spec(text, spec_path)
