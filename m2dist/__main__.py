from m2dist.cli.main import main

raise SystemExit(main())
