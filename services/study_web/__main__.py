from services.common.supervision import die_with_supervisor

die_with_supervisor()

from services.study_web.server import main  # noqa: E402

main()
