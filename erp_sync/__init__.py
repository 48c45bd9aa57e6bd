"""erp-sync: keeps companies' ERP systems in sync on schedules their admins control."""
