from imagemode.entry import run

raise SystemExit(run())
