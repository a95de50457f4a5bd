"""A hand-labelled PII set: snippets with every PII span marked as `[[type:value]]`.

Positives are written the way PII shows up in web text (signatures, contact pages, logs, forms);
hard negatives are what regexes confuse with PII (versions, dates, ranges, times, ISBNs, code,
hashes, prices, coordinates, private addresses). `cases()` gives (plain text, [(type, value)…]).
Types: email, phone, ipv4, ipv6, credit_card, iban. Private / documentation-range IPs are not
PII (datatrove masks only public addresses) and are left unmarked.
"""

from __future__ import annotations

import re

SNIPPETS = r"""
Contact us at [[email:info@acme-widgets.com]] for a quote.
Send your CV to [[email:jobs@northwind.co.uk]] before Friday.
Questions? Write to [[email:support+billing@shop.example.net]].
You can reach me at [[email:maria.gonzalez@universidad.es]] or by phone.
Email: [[email:j.smith_1984@mail.ru]]
Reply to [[email:no-reply@notifications.github.com]] will bounce.
-- Peter Miller <[[email:peter.miller@kernel.org]]>
Signed-off-by: Jane Doe <[[email:jane.doe@intel.com]]>
For press enquiries: [[email:press@bbc.co.uk]], [[email:media@bbc.co.uk]]
Mail [[email:Webmaster@City-Council.gov.au]] to report a broken link.
The maintainer ([[email:dev.team@opensource.org]]) approved the patch.
Contact:[[email:sales@bigcorp.com]]
"[[email:alice@wonder.land]]" is the address she gave.
List: [[email:announce-list@lists.debian.org]] (moderated)
Email [[email:o'brien@irish-post.ie]] with corrections.
Unsubscribe by writing to [[email:leave-12345@newsletter.example.com]].
Write to [[email:x@y.io]] if you find bugs.
My address is [[email:first.last@sub.domain.company.com]].
CC: [[email:hr-team@startup.ai]]; [[email:ceo@startup.ai]]
Customer service: [[email:kundenservice@versand-haus.de]] (Mo-Fr)
Authors: Li Wei ([[email:wei.li@tsinghua.edu.cn]]), Kim Park ([[email:kpark@snu.ac.kr]])
Call us on [[phone:(555) 123-4567]] during office hours.
Phone: [[phone:555-867-5309]]
Tel. [[phone:415.555.2671]] (main desk)
Fax [[phone:212 555 0198]]
Questions? Call [[phone:+1 800 555 0199]] toll free.
Reach the front desk at [[phone:+1-617-555-0143]].
Mobile: [[phone:+44 7700 900123]]
London office: [[phone:+44 20 7946 0958]]
Berlin: [[phone:+49 30 901820]] (Zentrale)
Paris: [[phone:+33 1 42 68 53 00]]
Tokyo branch [[phone:+81 3 1234 5678]]
Our hotline is [[phone:(800) 555-0100]], open 24/7.
Call [[phone:3125550182]] to book.
Dial [[phone:+61 2 9876 5432]] from overseas.
Emergency contact: [[phone:+1 (202) 555-0147]]
Please call me back at [[phone:646-555-0123]] tonight.
Ring [[phone:+353 1 234 5678]] for the Dublin office.
Sales: [[phone:888.555.0134]] / Support: [[phone:888.555.0135]]
Phone [[phone:+91 98765 43210]] (WhatsApp too)
Texts to [[phone:+1 312 555 0175]] only.
Our number changed to [[phone:(303) 555-0111]].
Contact Tom on [[phone:+27 21 555 1234]].
Call [[phone:+52 55 1234 5678]] (Mexico City).
Booking line [[phone:+34 912 345 678]]
The attacker came from [[ipv4:185.220.101.45]] according to the logs.
Failed password for root from [[ipv4:203.45.67.89]] port 22 ssh2
Client [[ipv4:8.8.8.8]] requested /index.html
DNS servers: [[ipv4:1.1.1.1]] and [[ipv4:9.9.9.9]]
Connection from [[ipv4:81.2.69.160]]:51234 refused
"GET / HTTP/1.1" from [[ipv4:66.249.66.1]] (Googlebot)
Banned IPs: [[ipv4:45.33.32.156]], [[ipv4:104.16.249.249]], [[ipv4:151.101.1.69]]
My home IP is [[ipv4:73.162.10.5]], can you whitelist it?
ping [[ipv4:142.250.74.206]] -c 4
Server address: [[ipv4:52.95.110.1]]
Visitor [[ipv4:91.198.174.192]] edited the page.
[[ipv4:77.88.55.60]] - - [10/Oct/2023:13:55:36 +0000] "GET /robots.txt"
The proxy at [[ipv4:5.188.10.76]] was blocked.
User logged in from [[ipv4:212.58.244.22]] at 09:14.
Edited by anonymous user [[ipv4:24.48.0.1]] on 3 March.
Peer [[ipv6:2001:4860:4860::8888]] answered the query.
Our server listens on [[ipv6:2606:4700:4700::1111]].
Connection from [[ipv6:2a00:1450:4001:82b::200e]] accepted
Host [[ipv6:2001:0470:0000:0000:0000:0000:0000:0001]] is up.
The client [[ipv6:2a03:2880:f12f:83:face:b00c:0:25de]] sent a request.
Blocked address [[ipv6:2604:a880:400:d0::1b4f:6001]] after 5 failures.
Card number [[credit_card:4111 1111 1111 1111]] was declined.
Paid with [[credit_card:5500-0000-0000-0004]] on 2 May.
Visa: [[credit_card:4012888888881881]]
AmEx ending: [[credit_card:3782 822463 10005]]
Card [[credit_card:6011 1111 1111 1117]] expires 04/27.
Transfer to IBAN [[iban:DE89 3704 0044 0532 0130 00]] please.
Account: [[iban:GB82WEST12345698765432]]
IBAN [[iban:FR14 2004 1010 0505 0001 3M02 606]] (BNP)
Pay into [[iban:NL91ABNA0417164300]] by the 5th.
Our bank details: [[iban:ES91 2100 0418 4502 0005 1332]]
Write to [[email:anna@example-shop.de]] or call [[phone:+49 89 1234 5678]].
Contact [[email:helpdesk@uni-heidelberg.de]], tel. [[phone:+49 6221 54 0]], for access.
Logged: user [[email:bob.k@corp.com]] from [[ipv4:62.210.16.61]]
Owner: [[email:admin@myblog.net]] ([[ipv4:178.62.4.18]])
Call [[phone:(212) 555-0100]] or email [[email:office@lawfirm.nyc]].
Details: [[email:r.ivanov@yandex.ru]], [[phone:+7 495 123 4567]]
Ask Sam ([[email:sam@studio.design]], [[phone:+1 604 555 0182]]).
The new version 2.4.1 was released yesterday.
Update to version 10.0.0.1 to fix the bug.
Requires Python 3.11.4 or newer.
Chrome 119.0.6045.105 is the current stable build.
Download v1.2.3.4 from the releases page.
The package lodash@4.17.21 has a known vulnerability.
npm install react@18.2.0 react-dom@18.2.0
pip install requests==2.31.0
The meeting is on 12.03.2024 at 10.30.
Born 01.02.1990 in Vienna.
Deadline: 2024-01-15.
The war lasted from 1939-1945.
Population grew 1990-2000 by 12 percent.
Pages 112-118 cover the details.
Open 09:00-17:30, Monday to Friday.
The race started at 12:30:45 sharp.
Timestamp 2023-10-10T13:55:36Z recorded.
ISBN 978-3-16-148410-0 is printed on the back.
ISBN 0-306-40615-2 (paperback)
See doi:10.1000/182 for the paper.
Use std::vector<int> and std::map for this.
Call Foo::bar() before Baz::qux().
In Rust, use std::collections::HashMap;
The hash is 5d41402abc4b2a76b9719d911017c592.
Commit a1b2c3d4e5f6 fixed the issue.
SHA-256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
Order #1234567890 has shipped.
Tracking number 1Z999AA10123456784 is in transit.
Invoice 2023-0001-0042 is attached.
The price is $1,234,567.89 this year.
Revenue reached 3.456.789 euros.
GPS: 48.8584, 2.2945 (Eiffel Tower)
Coordinates 40.7128° N, 74.0060° W
Router admin page: 192.168.1.1
Set the gateway to 10.0.0.1 and mask 255.255.255.0.
Listen on 127.0.0.1:8080 for development.
The container got 172.17.0.2 from Docker.
Documentation example: 192.0.2.1 and 198.51.100.7
Bind to 0.0.0.0 to accept all connections.
Loopback is ::1 and link-local starts with fe80::1.
Documentation prefix 2001:db8::1 must not be routed.
Multicast 224.0.0.251 is used by mDNS.
user@localhost received the cron output.
Log in as root@localhost to continue.
Retina assets: icon@2x.png and logo@3x.png.
Decorators like @property and @staticmethod are common.
Mention @johndoe in the comment.
The twitter handle is @nasa.
Price per unit: 12.50 @ 3 units.
Formula: a@b where b is a matrix.
Use the @media query for print styles.
Phone lines 1-800 are toll free.
Call extension 4567 for IT.
Room 101, building 12, floor 3.
Postal code 10115 Berlin.
Employee ID 2023456.
The year 2023 saw 1,234 new members.
Scores: 98.6, 97.2, 95.0 and 99.1.
Temperature ranged 12.5-18.3 degrees.
Article 12.3.4.1 of the regulation applies.
Section 1.2.3.4.5 explains the algorithm.
Build 10.0.19045.3570 of Windows 10.
OID 1.3.6.1.4.1.311 identifies Microsoft.
Serial number SN-4111-1111-1111 is on the label.
Test card 4111 1111 1111 1112 fails the checksum.
The number 1234 5678 9012 3456 is not a valid card.
Ratio 16:9 or 4:3 displays.
Time codes 01:02:03:04 mark the frames.
The MAC address is 00:1A:2B:3C:4D:5E.
Bible verse John 3:16 is famous.
Score was 3:1 after extra time.
Temperatures of -40 to +40 degrees.
Call stack depth 1024 reached.
The model has 7000000000 parameters.
Visit www.example.com/about for details.
See https://github.com/user/repo/issues/123 for context.
Email templates use {{user.email}} placeholders.
The regex [a-z]+@[a-z]+\.com matches simple emails.
Write x@y for the pair in some notations.
Pay $100.00 via PayPal.
Stock rose 2.5% to 145.67 points.
Chapter 3.2.1 describes the setup.
Date format 31.12.2023 is common in Germany.
Version 1.0.0.0 is the first release.
Windows 6.1.7601 is Windows 7 SP1.
Dates like 2023.10.05 appear in Korean texts.
Flight LH 1234 departs at 14:05.
The range 100-200 is valid.
Patent US 7,123,456 B2 was granted.
Code 555-0199 is reserved for fiction.
Call me maybe, said the song.
No contact details were given in the report.
He wrote his address on a napkin and left.
The IP address field was left blank.
Email is the most common form of business communication.
Phone numbers in the EU start with a country code.
Our office has no fax anymore.
The IBAN format varies by country.
She paid with a credit card at the counter.
The server logs were rotated at midnight.
Contact the admin if the problem persists.
Version numbers follow semantic versioning.
The DE89 prefix alone is not an account.
The GB82 WEST code is incomplete.
Account 12345678 at sort code 12-34-56.
Routing number 021000021 is for Chase.
NHS number 943 476 5919 (not a phone).
Case 2:21-cv-01234 was filed in court.
Use 0x7fffffff as the maximum.
Bytes 0xDEADBEEF mark the end.
Matrix dims 3x4x5 used in the test.
Resolution 1920x1080 pixels.
The score is 2-1 in overtime.
Dial 911 in an emergency.
Interstate I-95 runs north to south.
Model number WD-40-1234 is discontinued.
Colours #ff0000 and #00ff00 are primary.
Hex colour #1a2b3c4d is semi-transparent.
ES6 introduced arrow functions.
HTTP/1.1 200 OK was returned.
Port 8080 and 8443 are open.
Kernel 5.15.0-91-generic was booted.
CVE-2023-12345 affects this package.
RFC 5322 defines the message format.
UTF-8 encodes 1,112,064 code points.
"""


HELD_OUT = r"""
For refunds email [[email:refunds@travel-agency.com.au]] within 30 days.
Organiser: Dr. Amal Haddad ([[email:a.haddad@aub.edu.lb]])
Bug reports go to [[email:bugs@freedesktop.org]] please.
Ping me on [[email:kevin_oconnor99@hotmail.com]] when you land.
Our PGP key is on the server; mail [[email:security@mozilla.org]].
The volunteer coordinator, [[email:volunteers@redcross.ca]], replied.
Call the clinic on [[phone:(617) 555-0162]] to reschedule.
Tel: [[phone:+31 20 555 1234]]
Customer care [[phone:1-800-555-0175]] (free).
WhatsApp [[phone:+234 803 555 1234]] for orders.
Whois lists [[ipv4:198.199.119.7]] as the origin.
Attack traffic from [[ipv4:31.13.72.36]] and [[ipv4:94.142.241.111]] was dropped.
sshd[2231]: Invalid user admin from [[ipv4:116.31.116.44]]
AAAA record: [[ipv6:2620:0:862:ed1a::1]]
Paid by card [[credit_card:5105 1051 0510 5100]] last week.
Beneficiary IBAN: [[iban:IT60 X054 2811 1010 0000 0123 456]]
Reference [[iban:BE68 5390 0754 7034]] on the transfer form.
Release 3.10.12.1 fixes the regression.
Firmware 4.2.0.17 is available for download.
Ubuntu 22.04.3 LTS ships kernel 6.2.
The office moved on 15.08.2022.
Matches scheduled 18:00-20:00 every day.
Years active: 1998-2014.
Java's java.util.concurrent package helps here.
Use namespace::function to call it.
A checksum of 8f14e45fceea167a5a36dedd4e0a9b0c was computed.
SKU 4006381333931 is out of stock.
Set DNS to 10.10.0.53 inside the VPN.
Use 169.254.169.254 for the metadata service.
Replace user@host with your login.
Assets: avatar@2x.jpg, banner@3x.webp
The conference hall seats 1,500 people.
Ticket 2024-00123 was closed.
Lat/long 51.5074, -0.1278 for London.
Call stack frames 0x00007ff6 to 0x00007ffe.
It happened between 9:45 and 10:15.
The ratio was 1:2:3:4 across groups.
Invoice INV-555-123-4567 is overdue.
"""


def cases(block: str = SNIPPETS) -> list[tuple[str, list[tuple[str, str]]]]:
    """(plain text, [(type, value), …]) for every snippet of `block` (SNIPPETS: the development
    set the rules were tuned on; HELD_OUT: written after the rules were frozen), in order."""
    out = []
    for line in block.strip().splitlines():
        labels = [(m.group(1), m.group(2)) for m in re.finditer(r"\[\[(\w+):(.+?)\]\]", line)]
        text = re.sub(r"\[\[\w+:(.+?)\]\]", r"\1", line)
        out.append((text, labels))
    return out


def masked_values(original: str, masked: str, replacement: dict[str, str]) -> list[tuple[str, str]]:
    """(type, original value) of every span `masked` replaced, recovered by matching the masked
    text (replacements as wildcards) against the original."""
    kinds = {value: kind for kind, value in replacement.items()}
    token = "|".join(re.escape(r) for r in sorted(kinds, key=len, reverse=True))
    parts = re.split(f"({token})", masked)
    pattern = "".join(re.escape(p) if i % 2 == 0 else "(.+?)" for i, p in enumerate(parts))
    match = re.fullmatch(pattern, original, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"the masked text does not align with the original: {masked!r}")
    return [(kinds[p], value) for p, value in zip(parts[1::2], match.groups())]
