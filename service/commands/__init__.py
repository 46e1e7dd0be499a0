"""One module per `kvmemo` subcommand: its flags, its validated settings and its main()."""
