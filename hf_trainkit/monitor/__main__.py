from ..commands.monitor import main


raise SystemExit(main())
