from services.common.supervision import die_with_supervisor

die_with_supervisor()  # before the imports below, which take seconds

from services.scorer.server import main  # noqa: E402

main()
