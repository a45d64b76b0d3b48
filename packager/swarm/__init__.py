"""The swarm around a published release: tracker scrapes (``scrape``), the health report and its live,
unsigned ``swarm.json`` / ``swarm.html`` (``health``, ``live``), and a volunteer's pick list (``pick``).

Everything a tracker, a mirror or a status port sends is treated as hostile (``net`` bounds every reply in
size and time). Nothing here ever changes a signed or frozen publication file.
"""
