"""A labelled set for search quality (issue 14.2): each answer message with a paraphrased question
that shares few words with it, plus distractors. recall@10 = share of questions whose answer is
among the first 10 hits."""

from __future__ import annotations

#: (answer message, question asking for it in other words)
PAIRS: list[tuple[str, str]] = [
    (
        "Your parcel left our warehouse on Monday and should arrive within three business days.",
        "when will my package be delivered",
    ),
    (
        "To change your password open Settings, then Security, and choose a new passphrase.",
        "how can I reset my login credentials",
    ),
    (
        "We refunded the full amount to your credit card; banks usually take five days to show it.",
        "where is my money back for the order",
    ),
    (
        "The subscription renews automatically every month unless you cancel before the billing date.",
        "does my plan charge me again each period",
    ),
    ("Our support team is available from 9am to 6pm, Monday through Friday.", "what are your opening hours for help"),
    (
        "You can return unworn shoes within thirty days for an exchange or store credit.",
        "can I send back sneakers that do not fit",
    ),
    (
        "The invoice PDF is attached to the confirmation email we sent after checkout.",
        "where do I find the bill for my purchase",
    ),
    (
        "Two-factor authentication adds a code from your phone to every sign in.",
        "how do I make my account more secure with a mobile app",
    ),
    ("Shipping to Canada and Mexico costs a flat twelve dollars.", "what is the delivery fee for international orders"),
    (
        "The premium tier includes unlimited storage and priority support.",
        "what extra features come with the expensive plan",
    ),
    (
        "Your account was locked after five failed sign-in attempts; it unlocks in one hour.",
        "why can't I log in anymore",
    ),
    ("Coupons cannot be combined with other discounts or applied to gift cards.", "can I use two promo codes together"),
    ("The laptop battery lasts about ten hours of video playback.", "how long does the notebook run without charging"),
    ("We deleted your personal data as requested under the privacy regulation.", "did you erase my information"),
    ("The restaurant is closed on public holidays but open every weekend.", "is the diner open on christmas"),
    ("Our headquarters moved to Berlin last spring.", "where is the company office located now"),
    ("The API rate limit is one hundred requests per minute per key.", "how many calls can my integration make"),
    ("Tap the gear icon in the top corner to switch the app to dark theme.", "how do I turn on night mode"),
    ("The warranty covers manufacturing defects for two years from purchase.", "is a broken device repaired for free"),
    ("Flights can be rebooked without a fee up to a day before departure.", "can I change my plane ticket for free"),
    ("Dogs under ten kilograms may travel in the cabin inside a carrier.", "can I bring my small pet on board"),
    ("The meeting was moved from Tuesday to Thursday afternoon.", "when is the appointment rescheduled to"),
    ("Your driver is five minutes away in a grey sedan.", "when will my taxi get here"),
    ("Payments can be split into four interest-free installments.", "can I pay for this over time"),
]

#: Messages no question asks for.
DISTRACTORS: list[str] = [
    "Thanks, have a great day!",
    "I will check with my manager and get back to you.",
    "Could you share a screenshot of the error?",
    "The weather in Lisbon is sunny this week.",
    "Please confirm the email address on the account.",
    "Our new collection of summer dresses is now online.",
    "I have forwarded your feedback to the product team.",
    "The conference keynote starts at ten.",
    "Let me know if there is anything else I can do.",
    "We appreciate your patience while we investigate.",
    "The recipe needs two cups of flour and one egg.",
    "Football practice is cancelled because of the rain.",
    "The museum has a new exhibition about ancient Egypt.",
    "Click the link in the message to verify your address.",
    "Our team celebrated the product launch yesterday.",
    "The library extended its hours during exam season.",
    "Good morning! How can I help you today?",
    "I am sorry to hear about the trouble you had.",
    "The guitar lessons are on Wednesdays.",
    "Please rate your experience with our service.",
]
