"""Management command for admins and operators: ``python manage.py --help`` (or ``erp-sync``)."""

from erp_sync.cli import main

if __name__ == "__main__":
    main()
