"""`aegisctl check`: sequences running out of numbers (serial, identity and plain ones).

A sequence is judged against the smaller of its own range and the range of the column it
feeds: a `bigint` sequence behind an `integer` column fails at 2^31 - 1 all the same. aegisctl's
own memory tables use `serial` (4-byte) ids; the README says how to move them to bigint.
"""

from __future__ import annotations

from aegisctl.diagnostics.checks import CheckContext, CheckResult, CheckSkipped, grade, register_check

_TYPE_RANGE = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1),
               "bigint": (-(2**63), 2**63 - 1)}

SEQUENCES = """
WITH columns AS (
    -- serial and identity columns own their sequence; a plain DEFAULT nextval() depends on it.
    SELECT d.objid AS seq, a.attrelid, a.atttypid, a.attname
    FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
    UNION
    SELECT d.refobjid, ad.adrelid, a.atttypid, a.attname
    FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
    JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
    WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
), used AS (
    -- The narrowest column a sequence feeds is the one that runs out first.
    SELECT seq, (array_agg(format_type(atttypid, NULL) ORDER BY CASE atttypid
                   WHEN 'int2'::regtype THEN 1 WHEN 'int4'::regtype THEN 2 ELSE 3 END))[1]
                   AS column_type,
           string_agg(DISTINCT attrelid::regclass::text || '.' || quote_ident(attname), ', ')
                   AS used_by
    FROM columns GROUP BY seq
)
SELECT n.nspname, c.relname, format_type(s.seqtypid, NULL),
       CASE WHEN has_sequence_privilege(c.oid, 'SELECT,USAGE')
            THEN pg_sequence_last_value(c.oid)::numeric END,
       s.seqmin::numeric, s.seqmax::numeric, s.seqincrement::numeric, s.seqcycle,
       u.column_type, u.used_by
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN used u ON u.seq = c.oid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def used_share(last: float | None, low: float, high: float, increment: float) -> float:
    """How much of [low, high] the sequence has used, 0..1 (0 before its first value)."""
    if last is None or high <= low:
        return 0.0
    used = (last - low) if increment > 0 else (high - last)
    return max(0.0, min(1.0, used / (high - low)))


@register_check("sequences", "the fullest sequence (serial, identity or plain) as a share of "
                "what its type and its column's type can hold")
def sequences(ctx: CheckContext) -> CheckResult:
    rows = ctx.rows(SEQUENCES)
    if not rows:
        raise CheckSkipped("no sequences")
    worst = (-1.0, "", "", 0.0)
    for schema, name, seq_type, last, low, high, increment, cycle, column_type, used_by in rows:
        col_low, col_high = _TYPE_RANGE.get(column_type or "", _TYPE_RANGE["bigint"])
        lo, hi = max(float(low), float(col_low)), min(float(high), float(col_high))
        share = used_share(None if last is None else float(last), lo, hi, float(increment))
        if share > worst[0]:
            by_column = column_type in _TYPE_RANGE and \
                _TYPE_RANGE[column_type][1] < float(high)
            kind = f"its column's {column_type}" if by_column else seq_type
            detail = f"{schema}.{name}" + (f" ({used_by})" if used_by else "") + \
                f": {share:.1%} of the {kind} range" + (", cycles" if cycle else "")
            worst = (share, detail, column_type if by_column else seq_type, hi)
    t = ctx.settings.sequence_used_pct
    pct = round(100 * worst[0], 2)
    message = f"{len(rows)} sequence(s); fullest {worst[1]}"
    if pct > t.warning and worst[2] in ("integer", "smallint"):
        message += ": move the column and the sequence to bigint (see the README, \"Sequences\")"
    return grade("sequences", pct, t.warning, t.critical, unit="%", minimum=0, maximum=100,
                 message=message)
