"""Webhooks as the API process sends them: the fields a submit gives, the dispatcher, the sender.

What a webhook is (its URL rules, its events, a pending delivery) is the core's
(`kandinsky_batch/webhooks.py`), and its Redis state the store's (`kandinsky_batch/store/webhooks.py`);
the API is their only sender, so the rest lives here.
"""
