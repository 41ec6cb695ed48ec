"""Security: TLS/mTLS, who is calling (principals) and what they may do (groups, rate limits).

The front ends ask ``guard.Guard`` one question per request, and only when something can be refused.
"""
