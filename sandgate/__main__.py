from sandgate.cli import main

raise SystemExit(main())
