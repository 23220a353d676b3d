"""The eleven domains of the sample dataset: eight train databases and three dev databases.

Dev domains (restaurant, museum, car rental) share no tables with the train domains, so
the dev split measures cross-domain generalisation as Spider's does. Naming styles are
mixed on purpose (Spider has both ``Singer_ID`` and ``singer_id``).
"""

from __future__ import annotations

from .tables import (
    CITIES,
    COUNTRIES,
    NATIONALITIES,
    STREETS,
    Domain,
    Table,
    category,
    choice,
    codes,
    compose,
    date,
    decimals,
    distinct,
    integers,
    key,
    label,
    number,
    people,
    ref,
)

LIBRARY = Domain(
    "library",
    "train",
    (
        Table("author", "author", "author", "authors", 28, (
            key("author_id", "author id"),
            label("name", "name", people()),
            category("nationality", "nationality", choice(NATIONALITIES, 7)),
            number("birth_year", "birth year", integers(1920, 1995)),
        )),
        Table("book", "book", "book", "books", 120, (
            key("book_id", "book id"),
            label("title", "title", compose(("The", "A"), (
                "Silent", "Hidden", "Golden", "Broken", "Crimson", "Distant", "Frozen", "Burning", "Secret",
                "Lost", "Wild", "Quiet", "Last", "Silver", "Endless", "Forgotten", "Bright", "Hollow",
            ), (
                "River", "Garden", "Kingdom", "Mirror", "Forest", "Harbor", "Tower", "Island", "Winter",
                "Letter", "Shadow", "Voyage", "Orchard", "Bridge", "Storm", "Lantern", "Empire", "Valley",
            ))),
            ref("author_id", "author id", "author.author_id", "written by"),
            category("genre", "genre", choice(
                ("Fantasy", "Mystery", "Romance", "Science Fiction", "History", "Poetry", "Biography"))),
            number("pages", "number of pages", integers(90, 950)),
            number("price", "price", decimals(4.99, 45)),
            date("published_date", "published date", 1950, 2023),
        )),
        Table("member", "member", "member", "members", 60, (
            key("member_id", "member id"),
            label("name", "name", people()),
            category("city", "city", choice(CITIES, 6)),
            category("membership_type", "membership type", choice(("Standard", "Student", "Senior", "Family"))),
            date("join_date", "join date", 2005, 2023),
        )),
        Table("loan", "loan", "loan", "loans", 110, (
            key("loan_id", "loan id"),
            ref("book_id", "book id", "book.book_id", "borrowed"),
            ref("member_id", "member id", "member.member_id", "were borrowed by"),
            date("loan_date", "loan date", 2018, 2023),
            number("days", "days", integers(1, 60)),
        )),
    ),
)  # fmt: skip

HOSPITAL = Domain(
    "hospital",
    "train",
    (
        Table("Department", "department", "department", "departments", 15, (
            key("Department_ID", "department id"),
            label("Name", "name", distinct((
                "Cardiology", "Neurology", "Oncology", "Pediatrics", "Radiology", "Orthopedics",
                "Dermatology", "Emergency Medicine", "General Surgery", "Psychiatry", "Gastroenterology",
                "Urology", "Endocrinology", "Nephrology", "Ophthalmology", "Rheumatology", "Geriatrics",
            ))),
            number("Floor", "floor", integers(1, 9)),
            number("Budget", "budget", integers(400_000, 9_000_000, 1000)),
        )),
        Table("Physician", "physician", "physician", "physicians", 70, (
            key("Physician_ID", "physician id"),
            label("Name", "name", people()),
            category("Position", "position", choice(("Attending", "Resident", "Surgeon", "Consultant", "Intern"))),
            ref("Department_ID", "department id", "Department.Department_ID", "working in"),
            number("Salary", "salary", integers(60_000, 350_000, 100)),
            date("Hire_Date", "hire date", 1995, 2023),
        )),
        Table("Patient", "patient", "patient", "patients", 100, (
            key("Patient_ID", "patient id"),
            label("Name", "name", people()),
            category("City", "city", choice(CITIES, 7)),
            number("Age", "age", integers(1, 95)),
            category("Insurance", "insurance", choice(("Public", "Private", "Self-pay", "Employer"))),
        )),
        # Many-to-many link with a composite primary key (Spider's newer nested-list form).
        Table("Treatment", "treatment", "treatment", "treatments", 130, (
            ref("Physician_ID", "physician id", "Physician.Physician_ID", "received treatment from"),
            ref("Patient_ID", "patient id", "Patient.Patient_ID", "treated"),
            number("Cost", "cost", decimals(80, 9000)),
            date("Treatment_Date", "treatment date", 2019, 2023),
        ), composite_key=("Physician_ID", "Patient_ID")),
    ),
)  # fmt: skip

AIRLINE = Domain(
    "airline",
    "train",
    (
        Table("airline", "airline", "airline", "airlines", 18, (
            key("airline_id", "airline id"),
            label("name", "name", compose((
                "Aurora", "Coastal", "Polar", "Summit", "Pacific", "Nordic", "Sunrise", "Atlas", "Zephyr",
                "Meridian", "Falcon", "Crescent", "Cobalt", "Sierra", "Orion", "Vista", "Harbor", "Skyline",
            ), ("Air", "Airways", "Airlines"))),
            category("country", "country", choice(COUNTRIES, 7)),
            number("founded_year", "founded year", integers(1925, 2015)),
            number("fleet_size", "fleet size", integers(8, 400)),
        )),
        Table("airport", "airport", "airport", "airports", 30, (
            key("airport_id", "airport id"),
            label("name", "name", compose(
                ("Kingsley", "Riverside", "Lakeshore", "Hartfield", "Greenway", "Northgate", "Westbrook",
                 "Ashford", "Bayview", "Redmont", "Stonebridge", "Fairview", "Eastwood", "Highland",
                 "Marston", "Clearwater"),
                ("International", "Regional", "Field", "Airfield"))),
            category("city", "city", choice(CITIES, 9)),
            number("elevation", "elevation", integers(0, 2500)),
        )),
        Table("flight", "flight", "flight", "flights", 150, (
            key("flight_id", "flight id"),
            label("flight_number", "flight number", codes("LLDDD")),
            ref("airline_id", "airline id", "airline.airline_id", "operated by"),
            ref("airport_id", "airport id", "airport.airport_id", "departing from"),
            number("distance", "distance", integers(150, 9000)),
            number("price", "price", decimals(49, 1500)),
            category("cabin_class", "cabin class", choice(("Economy", "Premium Economy", "Business", "First"))),
            date("departure_date", "departure date", 2021, 2024),
        )),
    ),
)  # fmt: skip

MUSIC_FESTIVAL = Domain(
    "music_festival",
    "train",
    (
        Table("festival", "festival", "festival", "festivals", 20, (
            key("Festival_ID", "festival id"),
            label("Festival_Name", "festival name", compose(
                ("Sunset", "Northern", "Electric", "Summer", "Golden", "Wild", "Blue", "Neon", "Harvest", "Midnight"),
                ("Sound", "Beats", "Groove", "Waves", "Echo", "Pulse", "Rhythm", "Lights"),
                "Festival")),
            category("City", "city", choice(CITIES, 8)),
            number("Year", "year", integers(2008, 2023)),
            number("Attendance", "attendance", integers(2000, 90_000)),
        )),
        Table("record_label", "record label", "record label", "record labels", 15, (
            key("Label_ID", "label id"),
            label("Name", "name", compose(
                ("Blackbird", "Harbor", "Lighthouse", "Paper Moon", "Redwood", "Static", "Velvet Room",
                 "Northern Star"),
                ("Records", "Music", "Recordings", "Sound"))),
            category("Country", "country", choice(COUNTRIES, 5)),
            number("Founded_Year", "founded year", integers(1950, 2020)),
        )),
        Table("artist", "artist", "artist", "artists", 60, (
            key("Artist_ID", "artist id"),
            label("Name", "name", compose(
                ("Velvet", "Neon", "Electric", "Crystal", "Midnight", "Paper", "Iron", "Lunar", "Scarlet",
                 "Atomic", "Wild", "Golden"),
                ("Tigers", "Echoes", "Ravens", "Hearts", "Machines", "Wolves", "Pilots", "Lions", "Dreams",
                 "Ghosts", "Rivers", "Comets"))),
            category("Genre", "genre", choice(("Rock", "Pop", "Jazz", "Electronic", "Hip Hop", "Folk", "Metal"))),
            category("Country", "country", choice(COUNTRIES, 6)),
            number("Followers", "followers", integers(1000, 5_000_000)),
            ref("Label_ID", "label id", "record_label.Label_ID", "signed to"),
        )),
        Table("performance", "performance", "performance", "performances", 110, (
            ref("Festival_ID", "festival id", "festival.Festival_ID", "performed at"),
            ref("Artist_ID", "artist id", "artist.Artist_ID", "featured"),
            category("Stage", "stage", choice(("Main", "Forest", "Tent", "Arena"))),
            number("Fee", "fee", decimals(500, 250_000)),
        ), composite_key=("Festival_ID", "Artist_ID")),
    ),
)  # fmt: skip

SCHOOL = Domain(
    "school",
    "train",
    (
        Table("school", "school", "school", "schools", 16, (
            key("school_id", "school id"),
            label("name", "name", compose(
                ("Lincoln", "Roosevelt", "Jefferson", "Franklin", "Hamilton", "Madison", "Riverside",
                 "Westfield", "Oakwood", "Brookside", "Hillcrest", "Lakeview"),
                ("High School", "Academy", "Preparatory School"))),
            category("city", "city", choice(CITIES, 6)),
            category("school_type", "school type", choice(("Public", "Private", "Charter"))),
            number("founded_year", "founded year", integers(1870, 2010)),
            number("enrollment", "enrollment", integers(180, 3200)),
        )),
        Table("teacher", "teacher", "teacher", "teachers", 75, (
            key("teacher_id", "teacher id"),
            label("name", "name", people()),
            category("subject", "subject", choice(
                ("Mathematics", "Physics", "Chemistry", "Biology", "History", "English", "Art", "Music"))),
            ref("school_id", "school id", "school.school_id", "teaching at"),
            number("salary", "salary", integers(38_000, 110_000, 50)),
            date("hire_date", "hire date", 1990, 2023),
        )),
        Table("student", "student", "student", "students", 140, (
            key("student_id", "student id"),
            label("name", "name", people()),
            ref("school_id", "school id", "school.school_id", "enrolled at"),
            number("gpa", "gpa", decimals(1.5, 4.0)),
            date("birth_date", "birth date", 2005, 2011),
        )),
    ),
)  # fmt: skip

RETAIL = Domain(
    "retail_store",
    "train",
    (
        Table("Store", "store", "store", "stores", 18, (
            key("Store_ID", "store id"),
            label("Store_Name", "store name", compose(
                ("Green", "Corner", "Sunny", "Urban", "Maple", "Harbor", "Oak", "Central", "Valley", "Riverside"),
                ("Market", "Outlet", "Emporium", "Mart"))),
            category("City", "city", choice(CITIES, 6)),
            number("Floor_Area", "floor area", integers(120, 5000)),
            date("Opening_Date", "opening date", 1985, 2022),
        )),
        Table("Supplier", "supplier", "supplier", "suppliers", 16, (
            key("Supplier_ID", "supplier id"),
            label("Supplier_Name", "supplier name", compose(
                ("Apex", "Bright", "Cardinal", "Delta", "Evergreen", "Frontier", "Granite", "Horizon"),
                ("Trading", "Supply", "Wholesale", "Imports"))),
            category("Country", "country", choice(COUNTRIES, 6)),
            number("Rating", "rating", decimals(1.0, 5.0, 1)),
        )),
        Table("Product", "product", "product", "products", 65, (
            key("Product_ID", "product id"),
            label("Product_Name", "product name", compose(
                ("Classic", "Smart", "Eco", "Deluxe", "Compact", "Ultra", "Pro", "Mini", "Premium", "Basic"),
                ("Kettle", "Blender", "Lamp", "Backpack", "Headphones", "Toaster", "Umbrella", "Notebook",
                 "Jacket", "Speaker", "Mug", "Watch", "Camera", "Chair"))),
            category("Brand", "brand", choice(("Northwind", "Acme", "Globex", "Initech", "Umbrella Co", "Vandelay"))),
            number("Price", "price", decimals(3.5, 650)),
            number("Weight", "weight", decimals(0.1, 25)),
            ref("Supplier_ID", "supplier id", "Supplier.Supplier_ID", "supplied by"),
        )),
        Table("Inventory", "inventory", "inventory record", "inventory records", 120, (
            ref("Store_ID", "store id", "Store.Store_ID", "are stocked at"),
            ref("Product_ID", "product id", "Product.Product_ID", "are stocking"),
            number("Quantity", "quantity", integers(0, 500)),
        ), composite_key=("Store_ID", "Product_ID")),
    ),
)  # fmt: skip

FOOTBALL = Domain(
    "football_league",
    "train",
    (
        Table("team", "team", "team", "teams", 16, (
            key("team_id", "team id"),
            label("name", "name", compose(
                ("Red", "Blue", "Green", "Black", "White", "Golden", "Royal", "Silver"),
                ("Lions", "Eagles", "Rovers", "Wanderers", "Rangers", "Falcons", "Bears", "Sharks"))),
            category("city", "city", choice(CITIES, 8)),
            number("founded_year", "founded year", integers(1880, 2005)),
            number("stadium_capacity", "stadium capacity", integers(5000, 80_000)),
        )),
        Table("player", "player", "player", "players", 150, (
            key("player_id", "player id"),
            label("name", "name", people()),
            category("position", "position", choice(("Goalkeeper", "Defender", "Midfielder", "Forward"))),
            ref("team_id", "team id", "team.team_id", "playing for"),
            number("age", "age", integers(17, 38)),
            number("goals", "goals", integers(0, 140)),
            category("nationality", "nationality", choice(NATIONALITIES, 8)),
        )),
        Table("coach", "coach", "coach", "coaches", 20, (
            key("coach_id", "coach id"),
            label("name", "name", people()),
            ref("team_id", "team id", "team.team_id", "coaching"),
            category("role", "role", choice(("Head Coach", "Assistant", "Goalkeeping Coach", "Fitness Coach"))),
            date("start_date", "start date", 2012, 2023),
        )),
    ),
)  # fmt: skip

REAL_ESTATE = Domain(
    "real_estate",
    "train",
    (
        Table("Agent", "agent", "agent", "agents", 22, (
            key("Agent_ID", "agent id"),
            label("Name", "name", people()),
            category("Agency", "agency", choice(
                ("Keystone Realty", "Harbor Homes", "Summit Properties", "Urban Nest", "Blue Door Realty"))),
            number("Years_Experience", "years experience", integers(1, 35)),
        )),
        Table("Property", "property", "property", "properties", 130, (
            key("Property_ID", "property id"),
            label("Address", "address", compose(
                [str(n) for n in range(1, 200)], STREETS, ("Street", "Avenue", "Lane", "Road"))),
            category("City", "city", choice(CITIES, 7)),
            category("Property_Type", "property type", choice(("Apartment", "House", "Condo", "Townhouse", "Studio"))),
            number("Bedrooms", "bedrooms", integers(1, 6)),
            number("Price", "price", integers(85_000, 2_400_000, 500)),
            date("Listed_Date", "listed date", 2019, 2024),
            ref("Agent_ID", "agent id", "Agent.Agent_ID", "listed by"),
        )),
    ),
)  # fmt: skip

RESTAURANT = Domain(
    "restaurant",
    "dev",
    (
        Table("restaurant", "restaurant", "restaurant", "restaurants", 24, (
            key("restaurant_id", "restaurant id"),
            label("name", "name", compose(
                ("Golden", "Rustic", "Little", "Blue", "Olive", "Copper", "Silver", "Green"),
                ("Spoon", "Fork", "Lantern", "Table", "Garden", "Oven", "Kettle"),
                ("Bistro", "Kitchen", "Grill", "Cafe"))),
            category("city", "city", choice(CITIES, 6)),
            category("cuisine", "cuisine", choice(("Italian", "Japanese", "Mexican", "French", "Indian", "Thai"))),
            number("rating", "rating", decimals(2.5, 5.0, 1)),
            date("opened_date", "opened date", 1995, 2023),
        )),
        Table("chef", "chef", "chef", "chefs", 60, (
            key("chef_id", "chef id"),
            label("name", "name", people()),
            ref("restaurant_id", "restaurant id", "restaurant.restaurant_id", "working at"),
            category("specialty", "specialty", choice(("Pastry", "Grill", "Sauces", "Seafood", "Vegetarian"))),
            number("salary", "salary", integers(32_000, 120_000, 50)),
            number("years_experience", "years of experience", integers(1, 30)),
        )),
        Table("dish", "dish", "dish", "dishes", 70, (
            key("dish_id", "dish id"),
            label("name", "name", compose(
                ("Grilled", "Roasted", "Spicy", "Smoked", "Crispy", "Braised", "Lemon", "Garlic", "Honey", "Herb"),
                ("Chicken", "Salmon", "Tofu", "Lamb", "Risotto", "Noodles", "Salad", "Tart", "Soup", "Tacos",
                 "Dumplings", "Pasta", "Duck", "Shrimp"))),
            ref("restaurant_id", "restaurant id", "restaurant.restaurant_id", "served at"),
            category("course", "course", choice(("Starter", "Main", "Dessert", "Side"))),
            number("price", "price", decimals(4.5, 48)),
            number("calories", "calories", integers(120, 1400)),
        )),
    ),
)  # fmt: skip

MUSEUM = Domain(
    "museum",
    "dev",
    (
        Table("Museum", "museum", "museum", "museums", 16, (
            key("Museum_ID", "museum id"),
            label("Name", "name", compose(
                ("Hartley", "Whitmore", "Castellan", "Brennan", "Ashcombe", "Delacroix", "Fairbank",
                 "Lindqvist", "Moreland", "Okonkwo", "Pemberton", "Vasquez"),
                ("Museum of", "Gallery of"),
                ("Art", "History", "Design", "Science"))),
            category("City", "city", choice(CITIES, 7)),
            number("Opening_Year", "opening year", integers(1850, 2015)),
            number("Annual_Visitors", "annual visitors", integers(15_000, 2_500_000)),
        )),
        Table("Artwork", "artwork", "artwork", "artworks", 80, (
            key("Artwork_ID", "artwork id"),
            label("Title", "title", compose(
                ("Morning", "Evening", "Blue", "Quiet", "Golden", "Stormy", "Still", "Distant", "Red", "Winter",
                 "Silent", "Northern"),
                ("Harbor", "Portrait", "Landscape", "Garden", "Figure", "Study", "Composition", "Meadow", "Sea",
                 "Window", "Bridge", "Dancer", "Orchard", "Mountain"))),
            category("Medium", "medium", choice(
                ("Oil on canvas", "Watercolor", "Bronze", "Marble", "Photograph", "Charcoal", "Tempera"))),
            number("Year_Created", "year created", integers(1480, 2020)),
            number("Value", "value", integers(5_000, 40_000_000, 1000)),
            ref("Museum_ID", "museum id", "Museum.Museum_ID", "displayed at"),
        )),
        Table("Curator", "curator", "curator", "curators", 30, (
            key("Curator_ID", "curator id"),
            label("Name", "name", people()),
            ref("Museum_ID", "museum id", "Museum.Museum_ID", "employed by"),
            category("Specialty", "specialty", choice(("Modern Art", "Antiquities", "Photography", "Sculpture", "Textiles"))),
            date("Hire_Date", "hire date", 1998, 2023),
        )),
    ),
)  # fmt: skip

CAR_RENTAL = Domain(
    "car_rental",
    "dev",
    (
        Table("branch", "branch", "branch", "branches", 15, (
            key("branch_id", "branch id"),
            label("name", "name", compose(STREETS, ("Street", "Plaza", "Station", "Airport"), "Branch")),
            category("city", "city", choice(CITIES, 6)),
            date("opened_date", "opened date", 1998, 2022),
        )),
        Table("car", "car", "car", "cars", 90, (
            key("car_id", "car id"),
            label("plate_number", "plate number", codes("LL-DDDD")),
            category("make", "make", choice(("Toyota", "Ford", "Honda", "BMW", "Tesla", "Volkswagen", "Kia", "Renault"))),
            number("model_year", "model year", integers(2012, 2024)),
            number("daily_rate", "daily rate", decimals(25, 240)),
            ref("branch_id", "branch id", "branch.branch_id", "based at"),
        )),
        Table("customer", "customer", "customer", "customers", 70, (
            key("customer_id", "customer id"),
            label("name", "name", people()),
            category("city", "city", choice(CITIES, 7)),
            number("age", "age", integers(19, 82)),
        )),
        Table("rental", "rental", "rental", "rentals", 120, (
            key("rental_id", "rental id"),
            ref("car_id", "car id", "car.car_id", "rented"),
            ref("customer_id", "customer id", "customer.customer_id", "were rented by"),
            date("start_date", "start date", 2021, 2024),
            number("days", "days", integers(1, 30)),
            number("total_cost", "total cost", decimals(30, 6000)),
        )),
    ),
)  # fmt: skip

DOMAINS: tuple[Domain, ...] = (
    LIBRARY, HOSPITAL, AIRLINE, MUSIC_FESTIVAL, SCHOOL, RETAIL, FOOTBALL, REAL_ESTATE,
    RESTAURANT, MUSEUM, CAR_RENTAL,
)  # fmt: skip
