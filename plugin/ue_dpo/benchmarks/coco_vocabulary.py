"""The COCO object vocabulary of the CHAIR metric, as Object-HalBench uses it.

Each of the 80 COCO 2014 instance categories (key, spelled as in the COCO `categories` list) with
the words that count as a mention of it. The lists follow the synonym table of the CHAIR metric
(Rohrbach et al., "Object Hallucination in Image Captioning", EMNLP 2018; github.com/LisaAnne/Hallucination,
`data/synonyms.txt`, released under the BSD 2-Clause license) in the revision Object-HalBench
scores with (RLHF-V / RLAIF-V `eval/data/synonyms_refine.txt`), which adds "brother" and
"pedestrian" to person, "coffee table" to dining table and "remote control" to remote. Repeated
entries of the source lists are listed once here; they change nothing. Spellings are kept as in
the source, misspellings included ("solider", "televison", "phon", "knive"), because the metric
matches words exactly.

The double words and qualifier rules are the hard-coded rules of the same code lineage.
"""

from __future__ import annotations

COCO_CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "girl", "boy", "man", "woman", "kid", "child", "chef", "baker", "people", "adult", "rider",
        "children", "baby", "worker", "passenger", "sister", "brother", "biker", "policeman", "cop",
        "officer", "lady", "cowboy", "bride", "groom", "male", "female", "guy", "traveler", "mother",
        "father", "gentleman", "pitcher", "player", "skier", "snowboarder", "skater", "skateboarder",
        "foreigner", "caller", "offender", "coworker", "trespasser", "patient", "politician", "soldier",
        "grandchild", "serviceman", "walker", "drinker", "doctor", "bicyclist", "thief", "buyer",
        "teenager", "student", "camper", "driver", "solider", "hunter", "shopper", "villager", "pedestrian",
    ),
    "bicycle": ("bike", "unicycle", "minibike", "trike"),
    "car": ("automobile", "van", "minivan", "sedan", "suv", "hatchback", "cab", "jeep", "coupe", "taxicab", "limo", "taxi"),
    "motorcycle": ("scooter", "motor bike", "motor cycle", "motorbike", "moped"),
    "airplane": ("jetliner", "plane", "air plane", "monoplane", "aircraft", "jet", "airbus", "biplane", "seaplane"),
    "bus": ("minibus", "trolley"),
    "train": ("locomotive", "tramway", "caboose"),
    "truck": ("pickup", "lorry", "hauler", "firetruck"),
    "boat": (
        "ship", "liner", "sailboat", "motorboat", "dinghy", "powerboat", "speedboat", "canoe", "skiff",
        "yacht", "kayak", "catamaran", "pontoon", "houseboat", "vessel", "rowboat", "trawler", "ferryboat",
        "watercraft", "tugboat", "schooner", "barge", "ferry", "sailboard", "paddleboat", "lifeboat",
        "freighter", "steamboat", "riverboat", "battleship", "steamship",
    ),
    "traffic light": ("street light", "traffic signal", "stop light", "streetlight", "stoplight"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": (),
    "bench": ("pew",),
    "bird": (
        "ostrich", "owl", "seagull", "goose", "duck", "parakeet", "falcon", "robin", "pelican", "waterfowl",
        "heron", "hummingbird", "mallard", "finch", "pigeon", "sparrow", "seabird", "osprey", "blackbird",
        "fowl", "shorebird", "woodpecker", "egret", "chickadee", "quail", "bluebird", "kingfisher", "buzzard",
        "willet", "gull", "swan", "bluejay", "flamingo", "cormorant", "parrot", "loon", "gosling", "waterbird",
        "pheasant", "rooster", "sandpiper", "crow", "raven", "turkey", "oriole", "cowbird", "warbler",
        "magpie", "peacock", "cockatiel", "lorikeet", "puffin", "vulture", "condor", "macaw", "peafowl",
        "cockatoo", "songbird",
    ),
    "cat": ("kitten", "feline", "tabby"),
    "dog": (
        "puppy", "beagle", "pup", "chihuahua", "schnauzer", "dachshund", "rottweiler", "canine", "pitbull",
        "collie", "pug", "terrier", "poodle", "labrador", "doggie", "doberman", "mutt", "doggy", "spaniel",
        "bulldog", "sheepdog", "weimaraner", "corgi", "cocker", "greyhound", "retriever", "brindle", "hound",
        "whippet", "husky",
    ),
    "horse": ("colt", "pony", "racehorse", "stallion", "equine", "mare", "foal", "palomino", "mustang", "clydesdale", "bronc", "bronco"),
    "sheep": ("lamb", "ram", "goat", "ewe"),
    "cow": ("cattle", "oxen", "ox", "calf", "holstein", "heifer", "buffalo", "bull", "zebu", "bison"),
    "elephant": (),
    "bear": ("panda",),
    "zebra": (),
    "giraffe": (),
    "backpack": ("knapsack",),
    "umbrella": (),
    "handbag": ("wallet", "purse", "briefcase"),
    "tie": ("bow", "bow tie"),
    "suitcase": ("suit case", "luggage"),
    "frisbee": (),
    "skis": ("ski",),
    "snowboard": (),
    "sports ball": ("ball",),
    "kite": (),
    "baseball bat": (),
    "baseball glove": (),
    "skateboard": (),
    "surfboard": ("longboard", "skimboard", "shortboard", "wakeboard"),
    "tennis racket": ("racket",),
    "bottle": (),
    "wine glass": (),
    "cup": (),
    "fork": (),
    "knife": ("pocketknife", "knive"),
    "spoon": (),
    "bowl": ("container",),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "sub", "cheeseburger", "hamburger"),
    "orange": (),
    "broccoli": (),
    "carrot": (),
    "hot dog": (),
    "pizza": (),
    "donut": ("doughnut", "bagel"),
    "cake": ("cheesecake", "cupcake", "shortcake", "coffeecake", "pancake"),
    "chair": ("seat", "stool"),
    "couch": ("sofa", "recliner", "futon", "loveseat", "settee", "chesterfield"),
    "potted plant": ("houseplant",),
    "bed": (),
    "dining table": ("table", "desk", "coffee table"),
    "toilet": ("urinal", "commode", "lavatory", "potty"),
    "tv": ("monitor", "televison", "television"),
    "laptop": ("computer", "notebook", "netbook", "lenovo", "macbook", "laptop computer"),
    "mouse": (),
    "remote": ("remote control",),
    "keyboard": (),
    "cell phone": ("mobile phone", "phone", "cellphone", "telephone", "phon", "smartphone", "iPhone"),
    "microwave": (),
    "oven": ("stovetop", "stove", "stove top oven"),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge", "freezer"),
    "book": (),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddybear",),
    "hair drier": ("hairdryer",),
    "toothbrush": (),
}

COCO_WORD_TO_CLASS: dict[str, str] = {
    word: coco_class for coco_class, synonyms in COCO_CLASS_SYNONYMS.items() for word in (coco_class, *synonyms)
}

# Phrases that would otherwise fire for a COCO class through one of their words ("train track"
# is not a train); they map to themselves and, not being in the vocabulary, are then dropped.
COCO_NON_OBJECT_DOUBLE_WORDS = ("home plate", "train track")
# "baby dog" is a dog, not a person; "passenger train" is a train, not a person.
COCO_QUALIFIED_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
COCO_ANIMAL_QUALIFIERS = ("baby", "adult")
COCO_PASSENGER_VEHICLES = ("jet", "train")


def _double_word_map() -> dict[str, str]:
    # Every multi-word vocabulary entry maps to itself (a three-word entry such as "stove top oven"
    # is listed too, though the two-token scan can never match it), then the qualifier rules.
    mapping = {word: word for word in COCO_WORD_TO_CLASS if len(word.split(" ")) >= 2}
    mapping.update({phrase: phrase for phrase in COCO_NON_OBJECT_DOUBLE_WORDS})
    for animal in COCO_QUALIFIED_ANIMALS:
        for qualifier in COCO_ANIMAL_QUALIFIERS:
            mapping[f"{qualifier} {animal}"] = animal
    for vehicle in COCO_PASSENGER_VEHICLES:
        mapping[f"passenger {vehicle}"] = vehicle
    mapping["bow tie"] = "tie"
    mapping["toilet seat"] = "toilet"
    # Kept from the original rules (written for a singulariser that could leave "glas").
    mapping["wine glas"] = "wine glass"
    return mapping


COCO_DOUBLE_WORDS: dict[str, str] = _double_word_map()
