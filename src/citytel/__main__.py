from citytel.cli import main

raise SystemExit(main())
