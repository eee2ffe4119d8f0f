"""The notifications service: mails to buyers as their orders move, and the embedded mail catcher."""
