from kd_lightning.cli import main

main()
