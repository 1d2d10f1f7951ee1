"""Who may use the dashboard and the API: the LAN policy and sign-in (shared and personal passwords,
sessions), and which hosts and origins a request may carry."""
