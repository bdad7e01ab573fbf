"""What the change-log tests share: frames as format version 1 wrote them."""

from __future__ import annotations

from cdc.events import (
    ColumnDef,
    Op,
    RowBatch,
    RowEvent,
    SegmentStart,
    SnapshotCursor,
    SourceMark,
    SourcePosition,
    TableSchema,
)

# Frames as written by format version 1 (the first release), byte for byte. They must decode
# to the same values forever; a new field appended with a default keeps this test green.
GOLDEN = [
    (
        "95a4726f7773a36a6172a174cb41d954fc400000009294010c91079501cb8000000000000000c40200"
        "01a2c3a9c094020d9108c0",
        RowBatch(
            "jar",
            "t",
            1700000000.0,
            [
                RowEvent(Op.UPSERT, 12, [7], [1, -0.0, b"\x00\x01", "é", None]),
                RowEvent(Op.DELETE, 13, [8]),
            ],
        ),
    ),
    (
        "98a6736368656d61a3736f6ca1749292a16ca7494e544547455292a176a091a16cc2d928435245415445"
        "205441424c452074286c20494e5445474552205052494d415259204b45592c20762990",
        TableSchema(
            "sol",
            "t",
            [ColumnDef("l", "INTEGER"), ColumnDef("v", "")],
            ["l"],
            False,
            "CREATE TABLE t(l INTEGER PRIMARY KEY, v)",
            [],
        ),
    ),
    (
        "94a46d61726ba3736f6c84aa696e7374616c6c5f6964a3616263ab7468726f7567685f73657105a9736e"
        "617073686f74739193a174c3c0a66576656e747307cb41d954fc40000000",
        SourceMark(
            "sol", SourcePosition("abc", 5, [SnapshotCursor("t", True, None)], 7), 1700000000.0
        ),
    ),
    (
        "94a77365676d656e740081a3736f6c84aa696e7374616c6c5f6964a3616263ab7468726f7567685f7365"
        "7105a9736e617073686f747390a66576656e747300cb41d954fc40000000",
        SegmentStart(0, {"sol": SourcePosition("abc", 5)}, 1700000000.0),
    ),
]
