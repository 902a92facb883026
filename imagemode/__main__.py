from imagemode.cli import main

raise SystemExit(main())
